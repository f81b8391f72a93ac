"""Streaming decoding with the ONNX files of a streaming export, without torch.

The encoder is the one export-onnx-streaming.py writes (sherpa-onnx's online
zipformer2 layout): ``x [N, T, 80]`` plus its states in, ``encoder_out`` plus
the new states out, with ``T`` and ``decode_chunk_len`` in its metadata; the
decoder and joiner are those of :class:`icefall.onnx_decode.OnnxTransducer`.

    model = OnnxStreamingTransducer("encoder-chunk-16-left-128.onnx", "decoder-...", "joiner-...")
    tokens = stream_waveform(model, samples, piece=5120, on_change=print)

:func:`stream_waveform` does what icefall/streaming_decoder.py does with
PyTorch, for one stream and greedy search: fbank frames as the samples
arrive (icefall/streaming_features.py), a chunk of ``T`` frames decoded as
soon as it is complete (advancing by ``decode_chunk_len``), and at the end
13 + 30 frames of log(1e-10) so that the last words come out.
"""

import math
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import numpy as np

from icefall.onnx_decode import OnnxTransducer
from icefall.streaming_features import OnlineFeatures

PathLike = Union[str, Path]
LOG_EPS = math.log(1e-10)
TAIL_PAD_FRAMES = 30


class OnnxStreamingTransducer(OnnxTransducer):
    """The three sessions of a streaming export, and the encoder's chunk sizes.

    Attributes: ``T`` (fbank frames per encoder call), ``chunk_frames``
    (frames it advances by, the metadata's decode_chunk_len), and those of
    OnnxTransducer (context_size, vocab_size, blank_id).
    """

    def __init__(self, encoder: PathLike, decoder: PathLike, joiner: PathLike,
                 num_threads: int = 1):
        if Path(encoder).is_file():  # say what it is before the generic metadata checks
            _check_streaming_encoder(encoder)
        super().__init__(encoder, decoder, joiner, num_threads)
        meta = self.encoder.get_modelmeta().custom_metadata_map
        self.T, self.chunk_frames = int(meta["T"]), int(meta["decode_chunk_len"])
        self._inputs = self.encoder.get_inputs()[1:]  # the states, after x

    def init_states(self) -> List[np.ndarray]:
        """Zero states for one stream (batch dims, named "N", set to 1)."""
        states = []
        for inp in self._inputs:
            shape = [d if isinstance(d, int) else 1 for d in inp.shape]
            dtype = np.int64 if inp.type == "tensor(int64)" else np.float32
            states.append(np.zeros(shape, dtype=dtype))
        return states

    def run_encoder_chunk(self, x: np.ndarray, states: Sequence[np.ndarray]):
        """(x [1, T, 80], states) -> (encoder_out [1, T', joiner_dim], new states)."""
        feeds = {"x": x.astype(np.float32)}
        feeds.update({inp.name: s for inp, s in zip(self._inputs, states)})
        out = self.encoder.run(None, feeds)
        return out[0], out[1:]


def _check_streaming_encoder(path: PathLike) -> None:
    """Raise ValueError unless the encoder's metadata is that of export-onnx-streaming.py."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if meta.get("model_type") != "zipformer2" or "T" not in meta or "decode_chunk_len" not in meta:
        raise ValueError(f"{path}: not a streaming zipformer2 encoder (no T / "
                         "decode_chunk_len in its metadata); use export-onnx-streaming.py")


class _GreedyStream:
    """One stream's features, encoder states and greedy-search state."""

    def __init__(self, model: OnnxStreamingTransducer, skip_ids: Sequence[int]):
        self.model, self.skip = model, tuple(skip_ids)
        self.features = np.zeros((0, 80), dtype=np.float32)
        self.states = model.init_states()
        self.ys = model.initial_context()
        self.decoder_out = model.run_decoder([self.ys[-model.context_size:]])

    @property
    def tokens(self) -> List[int]:
        return self.ys[self.model.context_size:]

    def decode_ready(self, final: bool = False,
                     on_change: Optional[Callable[[List[int]], None]] = None) -> None:
        """Decode every complete chunk (with `final`, every remaining frame),
        calling on_change(tokens) after each chunk that changed them."""
        m = self.model
        while self.features.shape[0] >= (1 if final else m.T):
            x = self.features[: m.T]
            if x.shape[0] < m.T:
                x = np.pad(x, ((0, m.T - x.shape[0]), (0, 0)), constant_values=LOG_EPS)
            self.features = self.features[m.chunk_frames:]
            encoder_out, self.states = m.run_encoder_chunk(x[None], self.states)
            before = len(self.ys)
            for frame in encoder_out[0]:
                y = int(m.run_joiner(frame[None], self.decoder_out)[0].argmax())
                if y not in self.skip:
                    self.ys.append(y)
                    self.decoder_out = m.run_decoder([self.ys[-m.context_size:]])
            if len(self.ys) != before and on_change is not None:
                on_change(self.tokens)


def stream_waveform(model: OnnxStreamingTransducer, samples: np.ndarray, piece: int,
                    on_change: Optional[Callable[[List[int]], None]] = None,
                    skip_ids: Optional[Sequence[int]] = None) -> List[int]:
    """Greedy-decode 16 kHz `samples` fed `piece` samples at a time; calls
    on_change(tokens) whenever they change and returns the final tokens.
    skip_ids: ids never emitted (default: blank; see onnx_decode.skip_ids_for)."""
    fbank = OnlineFeatures()
    stream = _GreedyStream(model, skip_ids if skip_ids is not None else (model.blank_id,))

    def feed(frames: np.ndarray, final: bool = False) -> None:
        stream.features = np.concatenate([stream.features, frames])
        stream.decode_ready(final, on_change)

    for start in range(0, len(samples), piece):
        fbank.accept_waveform(samples[start: start + piece])
        feed(fbank.pop_frames())
    fbank.input_finished()
    tail = np.full((model.T - model.chunk_frames + TAIL_PAD_FRAMES, 80), LOG_EPS, np.float32)
    feed(np.concatenate([fbank.pop_frames(), tail]), final=True)
    return stream.tokens
