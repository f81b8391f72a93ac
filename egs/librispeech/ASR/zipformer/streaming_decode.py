#!/usr/bin/env python3
"""Decode the test sets chunk by chunk with a causal Zipformer, as it would stream.

Usage, from egs/<dataset>/ASR:

  ./zipformer/streaming_decode.py --epoch 30 --avg 9 --exp-dir zipformer/exp \\
      --causal 1 --chunk-size 16 --left-context-frames 128 \\
      --decoding-method greedy_search --num-decode-streams 200

  # an exported pretrained.pt:
  ./zipformer/streaming_decode.py --checkpoint zipformer/exp/pretrained.pt \\
      --exp-dir zipformer/exp --chunk-size 16 --left-context-frames 128

Up to --num-decode-streams utterances are decoded at once: each step runs one
chunk (2 * --chunk-size fbank frames, plus 13 frames of look-ahead) of every
active stream as a batch, with each stream's encoder states and search state
carried over (icefall/streaming_decoder.py, icefall/streaming_search.py); a
stream joins when a slot frees up and leaves after its last chunk (the
utterance is padded with 30 frames of log(1e-10), as icefall's).

Features: the whole-utterance fbank of each cut (precomputed, or computed
from its audio with icefall/features.py), fed chunk by chunk, so the
features are exactly those of training and decode.py and any difference
from non-streaming decoding comes from the model.  (streaming_pretrained.py
computes them as the audio arrives, with kaldi-native-fbank, as sherpa-onnx.)

Writes recogs-<set>-<key>-<suffix>.txt, errs-... and wer-summary-... into
<exp-dir>/streaming/<decoding-method>/ and logs the WER, the real-time factor
and the compute time per chunk.
"""

import argparse
import logging
import statistics
import sys
from pathlib import Path
from typing import Iterator, Optional, Tuple


RECIPE = Path(__file__).resolve().parent
sys.path.insert(0, str(RECIPE))
sys.path.insert(0, str(RECIPE.parents[3]))  # the repository root, for `icefall`

from icefall.threads import apply_num_threads, set_thread_env  # noqa: E402

set_thread_env()  # before torch is imported

import torch  # noqa: E402

from icefall.asr_datamodule import AsrDataModule  # noqa: E402
from icefall.checkpoint import CheckpointError, add_checkpoint_arguments  # noqa: E402
from icefall.cli import device_from_flag  # noqa: E402
from icefall.streaming_decoder import StreamingDecoder, StreamingStats, decode_streams  # noqa: E402
from icefall.streaming_search import add_streaming_search_arguments  # noqa: E402
from icefall.tokens import SymbolTable, TokenFileError, read_tokens  # noqa: E402
from icefall.utils import setup_logger  # noqa: E402
from icefall.wer import store_transcripts, write_error_stats, write_wer_summary  # noqa: E402
import model as recipe_model  # noqa: E402
import scaling as recipe_scaling  # noqa: E402
import zipformer as recipe_zipformer  # noqa: E402
from model import add_model_arguments, stack_states, unstack_states  # noqa: E402

PAD_FRAMES = 7 + 2 * 3  # look-ahead of the subsampling (Conv2d + ConvNeXt)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--exp-dir", type=Path, default=Path("zipformer/exp"),
                        help="checkpoints, and where results go (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an exported file with a 'model' state_dict; if given, "
                        "--epoch/--iter/--avg are not used (default: %(default)s)")
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"),
                        help="tokens.txt (default: %(default)s)")
    add_streaming_search_arguments(parser)
    parser.add_argument("--num-decode-streams", type=int, default=2000,
                        help="streams decoded in parallel (default: %(default)s)")
    parser.add_argument("--device", type=str, default=None,
                        help="cpu or cuda (default: cuda if available)")
    add_model_arguments(parser)
    AsrDataModule.add_arguments(parser)
    parser.epilog = ("--chunk-size and --left-context-frames take one value each here "
                     "(frames at 50 Hz): the chunk and left context to decode with.")
    return parser


def import_export_onnx():
    """export-onnx.py (a file name `import` cannot take) as a module, bound to
    this recipe's model/scaling/zipformer modules even if another recipe's
    modules of the same names are loaded (export-onnx-streaming.py takes its
    OnnxSwoosh)."""
    import importlib.util

    mine = {"model": recipe_model, "scaling": recipe_scaling, "zipformer": recipe_zipformer}
    saved = {name: sys.modules.get(name) for name in mine}
    sys.modules.update(mine)
    try:
        spec = importlib.util.spec_from_file_location("zipformer_export_onnx",
                                                      RECIPE / "export-onnx.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def load_model(args, tokens: SymbolTable) -> torch.nn.Module:
    """The model --checkpoint or --exp-dir --epoch/--iter/--avg select, in eval
    mode (icefall.model_loading: the config stored in the file, else the size
    flags; icefall's own files too)."""
    from icefall.model_loading import load_model as load

    return load(recipe_model, args, tokens, args.tokens)


def single_int(flag: str, value: str) -> int:
    parts = str(value).split(",")
    if len(parts) != 1 or int(parts[0]) <= 0:
        raise ValueError(f"{flag}: give one positive value to stream with, got {value!r}")
    return int(parts[0])


def set_streaming(model: torch.nn.Module, chunk_size: int, left_context_frames: int) -> None:
    """Make a causal model stream with this chunk and left context (50 Hz frames)."""
    if not model.encoder.causal:
        raise ValueError("the model is not causal (trained without --causal 1): it cannot stream")
    model.encoder.chunk_size = (chunk_size,)
    model.encoder.left_context_frames = (left_context_frames,)


def load_streaming_model(args) -> Tuple[torch.nn.Module, SymbolTable, int, int]:
    """(model, tokens, chunk size, left context): the one --chunk-size and
    --left-context-frames given (50 Hz frames), --tokens, and the model
    :func:`load_model` selects, set to stream with them. User mistakes raise
    ValueError, CheckpointError, TokenFileError or FileNotFoundError."""
    chunk = single_int("--chunk-size", args.chunk_size)
    left = single_int("--left-context-frames", args.left_context_frames)
    tokens = read_tokens(args.tokens)
    model = load_model(args, tokens)
    set_streaming(model, chunk, left)
    return model, tokens, chunk, left


def cut_features(cuts) -> Iterator[Tuple[str, torch.Tensor]]:
    """(cut id, fbank [T, 80]) of each cut: its precomputed features, else from its audio."""
    from icefall.features import compute_fbank

    for cut in cuts:
        if cut.has_features:
            yield cut.id, torch.from_numpy(cut.load_features())
        else:
            yield cut.id, compute_fbank([cut.load_audio()[0]], cut.sampling_rate)[0]


def log_stats(test_set: str, stats: StreamingStats) -> None:
    per_chunk = [t for t, _ in stats.chunk_times]
    sizes = [n for _, n in stats.chunk_times]
    logging.info(
        f"{test_set}: real-time factor {stats.rtf:.4f} ({stats.audio_seconds:.0f} s of audio in "
        f"{stats.compute_seconds:.1f} s); {len(per_chunk)} chunk steps, compute per step "
        f"median {1000 * statistics.median(per_chunk):.1f} ms, max {1000 * max(per_chunk):.1f} ms, "
        f"{sum(sizes) / len(sizes):.1f} streams per step on average; per stream and chunk "
        f"{1000 * stats.compute_seconds / sum(sizes):.2f} ms")


def decode_test_set(decoder: StreamingDecoder, cuts, tokens: SymbolTable, num_streams: int):
    texts = {}
    for cut in cuts:
        texts[cut.id] = " ".join(s.text for s in cut.supervisions if s.text)
    hyps, stats = decode_streams(decoder, cut_features(cuts), num_streams=num_streams)
    results = sorted((cut_id, texts[cut_id].split(), tokens.decode(ids).split())
                     for cut_id, ids in hyps.items())
    return results, stats


def main(argv: Optional[list] = None) -> int:
    args = get_parser().parse_args(argv)
    apply_num_threads()
    try:
        model, tokens, chunk, left = load_streaming_model(args)
        data = AsrDataModule(args)
        test_sets = data.test_sets()
    except (CheckpointError, TokenFileError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.checkpoint is not None:
        suffix = f"{args.checkpoint.stem}"
    elif args.iter > 0:
        suffix = f"iter-{args.iter}-avg-{args.avg}"
    else:
        suffix = f"epoch-{args.epoch}-avg-{args.avg}"
    if args.checkpoint is None and args.use_averaged_model:
        suffix += "-use-averaged-model"
    suffix += f"-chunk-{chunk}-left-context-{left}"
    res_dir = args.exp_dir / "streaming" / args.decoding_method
    res_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(res_dir / f"log-decode-{suffix}")
    device = device_from_flag(args.device)
    model.to(device)
    logging.info(f"Streaming decoding with {args.decoding_method} on {device}, chunk {chunk} "
                 f"(= {2 * chunk * 10} ms), left context {left} frames; {vars(args)}")
    decoder = StreamingDecoder(model, stack_states, unstack_states, chunk_frames=2 * chunk,
                               pad_frames=PAD_FRAMES, method=args.decoding_method,
                               num_active_paths=args.num_active_paths, device=device)
    key = (args.decoding_method if args.decoding_method == "greedy_search"
           else f"num_active_paths_{args.num_active_paths}")
    summary = {}
    for test_set, cuts in test_sets.items():
        results, stats = decode_test_set(decoder, cuts, tokens, args.num_decode_streams)
        store_transcripts(res_dir / f"recogs-{test_set}-{key}-{suffix}.txt", results)
        with open(res_dir / f"errs-{test_set}-{key}-{suffix}.txt", "w") as f:
            wer = write_error_stats(f, f"{test_set}-{key}", results)
        write_wer_summary(res_dir / f"wer-summary-{test_set}-{key}-{suffix}.txt", {key: wer})
        summary[test_set] = wer
        logging.info(f"{test_set}: WER {wer:.2f}% over {len(results)} utterances")
        log_stats(test_set, stats)
    for test_set, wer in summary.items():
        print(f"{test_set}\t{key}\t{wer:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
