"""Decoding exported ONNX transducers with onnxruntime and numpy (no torch).

The three files are those of ``export-onnx.py`` (the layout of icefall's and
sherpa-onnx's offline transducers):

- encoder.onnx: (x [N, T, 80] float32, x_lens [N] int64) ->
  (encoder_out [N, T', joiner_dim], encoder_out_lens [N] int64); the joiner's
  encoder_proj is already applied.
- decoder.onnx: y [N, context_size] int64 -> decoder_out [N, joiner_dim]; the
  joiner's decoder_proj is already applied; -1 means "no token".
- joiner.onnx: (encoder_out [N, joiner_dim], decoder_out [N, joiner_dim]) ->
  logit [N, vocab_size].

Features come from kaldi-native-fbank (the extractor sherpa-onnx uses) with
the settings of :mod:`icefall.features`; on the synth test set they differ from
lhotse's by at most about 1e-3 (mean about 3e-6) in log-mel units.

Every file carries metadata (see ``REQUIRED_METADATA``), among them an
``export_id`` shared by the three files of one export: :class:`OnnxTransducer`
refuses files without it or from different exports, with a one-line error.
:class:`OnnxBackend` plugs the model into :func:`icefall.transcribe.transcribe_files`
(batching by duration, long files in chunks).

Decoding follows :mod:`icefall.beam_search`: greedy search emits at most one
symbol per frame; modified beam search merges equal token sequences by
log-add and picks the result by length-normalised score.
"""

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, Path]

LOG_EPS = math.log(1e-10)  # feature padding value, as pretrained.py pads
SAMPLE_RATE = 16000
NUM_MEL_BINS = 80


def compute_fbank_knf(waveforms: Sequence[np.ndarray]) -> List[np.ndarray]:
    """80-dim log-mel filter banks with kaldi-native-fbank.

    The settings are those of :func:`icefall.features.make_fbank`: 25 ms povey
    windows every 10 ms, dither 0, snip_edges=False, low_freq 20 Hz,
    high_freq -400 (Nyquist - 400 Hz).

    Args:
      waveforms: 1-D float signals ``[N_i]`` in [-1, 1] at 16 kHz.
    Returns:
      float32 arrays ``[T_i, 80]``, ``T_i = (N_i + 80) // 160``.
    """
    import kaldi_native_fbank as knf

    from icefall.streaming_features import knf_fbank_options

    opts = knf_fbank_options()
    out = []
    for w in waveforms:
        fbank = knf.OnlineFbank(opts)
        fbank.accept_waveform(SAMPLE_RATE, np.asarray(w, dtype=np.float32).reshape(-1))
        fbank.input_finished()
        n = fbank.num_frames_ready
        feats = np.empty((n, NUM_MEL_BINS), dtype=np.float32)
        for i in range(n):
            feats[i] = fbank.get_frame(i)
        out.append(feats)
    return out


def pad_features(features: Sequence[np.ndarray],
                 pad_value: float = LOG_EPS) -> Tuple[np.ndarray, np.ndarray]:
    """List of ``[T_i, F]`` -> (x ``[N, max T_i, F]`` float32, x_lens ``[N]`` int64)."""
    lens = np.array([f.shape[0] for f in features], dtype=np.int64)
    x = np.full((len(features), int(lens.max()), features[0].shape[1]), pad_value,
                dtype=np.float32)
    for i, f in enumerate(features):
        x[i, : f.shape[0]] = f
    return x, lens


# Metadata each file must carry (export-onnx.py writes them); "export_id" is
# the same random id in the three files of one export, so that files of
# different exports are not mixed.
REQUIRED_METADATA = {
    "encoder": ("export_id", "feature_dim", "subsampling_factor", "subsampling_offset"),
    "decoder": ("export_id", "context_size", "vocab_size"),
    "joiner": ("export_id", "joiner_dim"),
}


def subsampling_metadata(frames_after_subsampling) -> Dict[str, int]:
    """``{"subsampling_factor": s, "subsampling_offset": c}`` with
    ``frames_after_subsampling(T) == (T - c) // s`` for every T (checked up to
    2000), for the encoder's metadata. Raises ValueError if no such pair fits."""
    s = int(round(100_000 / frames_after_subsampling(100_000)))
    for c in range(-s, 64):
        if all(frames_after_subsampling(t) == (t - c) // s for t in range(1, 2000)):
            return {"subsampling_factor": s, "subsampling_offset": c}
    raise ValueError("frames_after_subsampling is not of the form (T - c) // s")


def check_metadata(meta: Dict[str, Dict[str, str]], files: Dict[str, PathLike]) -> None:
    """Raise ValueError (one line, naming the file) when a model file lacks
    its metadata or the three files come from different exports."""
    for name, keys in REQUIRED_METADATA.items():
        missing = [k for k in keys if k not in meta[name]]
        if missing:
            raise ValueError(f"{files[name]}: no {', '.join(missing)} in the {name}'s metadata; "
                             "not a complete export of export-onnx.py (re-export it)")
    ids = {name: meta[name]["export_id"] for name in meta}
    if len(set(ids.values())) > 1:
        raise ValueError(
            "the ONNX files come from different exports: "
            + ", ".join(f"{files[n]} ({ids[n][:8]})" for n in ids)
            + "; use the encoder, decoder and joiner written together by one export-onnx.py run")
    feature_dim = int(meta["encoder"]["feature_dim"])
    if feature_dim != NUM_MEL_BINS:
        raise ValueError(f"{files['encoder']}: expects {feature_dim}-dim features, not {NUM_MEL_BINS}")


class OnnxTransducer:
    """The three onnxruntime sessions of an exported transducer.

    Args:
      encoder, decoder, joiner: paths of the .onnx files (fp32 or int8).
      num_threads: intra-op threads of each session.
    Attributes (from the metadata, checked by :func:`check_metadata`):
    ``context_size``, ``vocab_size``, ``blank_id`` (0 if absent),
    ``subsampling_factor``, ``subsampling_offset``.
    """

    def __init__(self, encoder: PathLike, decoder: PathLike, joiner: PathLike,
                 num_threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1

        def session(path: PathLike) -> "ort.InferenceSession":
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path}: ONNX model not found (run export-onnx.py)")
            return ort.InferenceSession(str(path), sess_options=opts,
                                        providers=["CPUExecutionProvider"])

        self.encoder = session(encoder)
        self.decoder = session(decoder)
        self.joiner = session(joiner)
        meta = {name: getattr(self, name).get_modelmeta().custom_metadata_map
                for name in ("encoder", "decoder", "joiner")}
        files = {"encoder": encoder, "decoder": decoder, "joiner": joiner}
        check_metadata(meta, files)
        self.context_size = int(meta["decoder"]["context_size"])
        self.vocab_size = int(meta["decoder"]["vocab_size"])
        self.blank_id = int(meta["decoder"].get("blank_id", 0))
        self.subsampling_factor = int(meta["encoder"]["subsampling_factor"])
        self.subsampling_offset = int(meta["encoder"]["subsampling_offset"])

    def frames_after_subsampling(self, num_frames: int) -> int:
        """Encoder output frames for ``num_frames`` fbank frames."""
        return (num_frames - self.subsampling_offset) // self.subsampling_factor

    def run_encoder(self, x: np.ndarray, x_lens: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(x [N, T, 80] float32, x_lens [N] int64) -> ([N, T', joiner_dim], [N] int64)."""
        out, out_lens = self.encoder.run(None, {"x": x.astype(np.float32),
                                                "x_lens": x_lens.astype(np.int64)})
        return out, out_lens

    def run_decoder(self, contexts: Sequence[Sequence[int]]) -> np.ndarray:
        """N contexts of ``context_size`` ids -> [N, joiner_dim]."""
        y = np.asarray(contexts, dtype=np.int64).reshape(-1, self.context_size)
        return self.decoder.run(None, {"y": y})[0]

    def run_joiner(self, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """(enc [N, joiner_dim], dec [N, joiner_dim]) -> logits [N, vocab_size]."""
        return self.joiner.run(None, {"encoder_out": enc, "decoder_out": dec})[0]

    def initial_context(self) -> List[int]:
        return [-1] * (self.context_size - 1) + [self.blank_id]


def greedy_search(model: OnnxTransducer, encoder_out: np.ndarray,
                  encoder_out_lens: np.ndarray,
                  skip_ids: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Batched greedy search, at most one symbol per frame.

    Args:
      model: the sessions.
      encoder_out: [N, T, joiner_dim] from :meth:`OnnxTransducer.run_encoder`.
      encoder_out_lens: [N] valid frames.
      skip_ids: ids that do not extend a hypothesis (default: blank only).
    Returns:
      N lists of token ids.
    """
    skip = set(skip_ids if skip_ids is not None else (model.blank_id,))
    n = encoder_out.shape[0]
    lens = [int(v) for v in encoder_out_lens]
    contexts = [model.initial_context() for _ in range(n)]
    hyps: List[List[int]] = [[] for _ in range(n)]
    dec = model.run_decoder(contexts)
    for t in range(max(lens, default=0)):
        active = [i for i in range(n) if lens[i] > t]
        ys = model.run_joiner(encoder_out[active, t], dec[active]).argmax(axis=-1)
        emitted = [i for i, y in zip(active, ys.tolist()) if y not in skip]
        if not emitted:
            continue
        for i, y in zip(active, ys.tolist()):
            if y not in skip:
                hyps[i].append(y)
                contexts[i] = contexts[i][1:] + [y]
        dec[emitted] = model.run_decoder([contexts[i] for i in emitted])
    return hyps


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def modified_beam_search(model: OnnxTransducer, encoder_out: np.ndarray,
                         encoder_out_lens: np.ndarray, beam: int = 4,
                         skip_ids: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Beam search with at most one symbol per frame, per utterance.

    Hypotheses with the same tokens are merged (log-add); the result is the
    hypothesis with the best ``log_prob / len(ys)`` (``ys`` includes the
    ``context_size`` initial context), as in :mod:`icefall.beam_search`.

    Args: as :func:`greedy_search`, plus ``beam`` (hypotheses kept per frame).
    Returns:
      N lists of token ids.
    """
    skip = set(skip_ids if skip_ids is not None else (model.blank_id,))
    c = model.context_size
    results = []
    for i in range(encoder_out.shape[0]):
        hyps: Dict[Tuple[int, ...], float] = {tuple(model.initial_context()): 0.0}
        for t in range(int(encoder_out_lens[i])):
            keys = list(hyps)
            dec = model.run_decoder([k[-c:] for k in keys])
            enc = np.repeat(encoder_out[i, t][None], len(keys), axis=0)
            scores = _log_softmax(model.run_joiner(enc, dec).astype(np.float64))
            scores += np.array([hyps[k] for k in keys])[:, None]
            flat = scores.reshape(-1)
            k = min(beam, flat.size)
            top = np.argpartition(-flat, k - 1)[:k]
            top = top[np.argsort(-flat[top], kind="stable")]
            new: Dict[Tuple[int, ...], float] = {}
            for index in top.tolist():
                h, token = divmod(index, scores.shape[1])
                ys = keys[h] if token in skip else keys[h] + (token,)
                new[ys] = float(np.logaddexp(new[ys], flat[index])) if ys in new else float(flat[index])
            hyps = new
        best = max(hyps, key=lambda ys: hyps[ys] / len(ys))
        results.append(list(best[c:]))
    return results


DECODERS = {"greedy_search": greedy_search, "modified_beam_search": modified_beam_search}


def skip_ids_for(model: OnnxTransducer, tokens=None) -> Tuple[int, ...]:
    """Blank, plus ``<unk>`` when ``tokens`` (a SymbolTable) has one: like
    icefall and sherpa-onnx, the unknown token is never emitted."""
    if tokens is not None and "<unk>" in tokens:
        return (model.blank_id, tokens["<unk>"])
    return (model.blank_id,)


def decode_waveforms(model: OnnxTransducer, waveforms: Sequence[np.ndarray],
                     method: str = "greedy_search", beam: int = 4,
                     skip_ids: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Features, encoder and search for a batch of 16 kHz waveforms; N lists of
    ids.  ``skip_ids``: see :func:`greedy_search` (e.g. from :func:`skip_ids_for`)."""
    if method not in DECODERS:
        raise ValueError(f"unknown decoding method {method!r}; expected one of {list(DECODERS)}")
    x, x_lens = pad_features(compute_fbank_knf(waveforms))
    encoder_out, encoder_out_lens = model.run_encoder(x, x_lens)
    if method == "greedy_search":
        return greedy_search(model, encoder_out, encoder_out_lens, skip_ids=skip_ids)
    return modified_beam_search(model, encoder_out, encoder_out_lens, beam=beam,
                                skip_ids=skip_ids)


class OnnxBackend:
    """:class:`OnnxTransducer` behind :func:`icefall.transcribe.transcribe_files`
    (the methods of :class:`icefall.transcribe.Backend`; numpy arrays)."""

    def __init__(self, model: OnnxTransducer, method: str = "greedy_search", beam: int = 4,
                 skip_ids: Optional[Sequence[int]] = None):
        if method not in DECODERS:
            raise ValueError(f"unknown decoding method {method!r}; expected one of {list(DECODERS)}")
        self.model, self.method, self.beam, self.skip_ids = model, method, beam, skip_ids
        self.frames_after_subsampling = model.frames_after_subsampling

    def features(self, waves: Sequence[np.ndarray]) -> List[np.ndarray]:
        return compute_fbank_knf(waves)

    def encode(self, features: Sequence[np.ndarray]) -> List[np.ndarray]:
        out, lens = self.model.run_encoder(*pad_features(features))
        return [out[i, :n] for i, n in enumerate(lens.tolist())]

    def concat(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate(list(parts), axis=0)

    def search(self, encoder_outs: Sequence[np.ndarray]) -> List[List[int]]:
        if len(encoder_outs) == 1:  # e.g. a long file: no padded copy
            x, lens = encoder_outs[0][None], np.array([len(encoder_outs[0])], dtype=np.int64)
        else:
            x, lens = pad_features(encoder_outs, pad_value=0.0)
        if self.method == "greedy_search":
            return greedy_search(self.model, x, lens, skip_ids=self.skip_ids)
        return modified_beam_search(self.model, x, lens, beam=self.beam, skip_ids=self.skip_ids)
