#!/usr/bin/env python3
"""Streaming Zipformer speed: real-time factor and compute per chunk.

For each chunk size: our PyTorch streaming decoder (icefall/streaming_decoder.py,
greedy search) on one stream at a time and on all utterances as a batch of
streams, and sherpa-onnx's OnlineRecognizer on the streaming ONNX export
(fp32 and int8), all on the same synthetic audio.  The model is icefall's
"small" Zipformer sizes with --causal 1 (random weights, vocab 500, its blank
logit raised so that about 60% of frames are blank: search cost is realistic).

  OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive python benchmarks/streaming_benchmark.py

A trained causal Zipformer instead (loaded as zipformer/streaming_decode.py
loads it: --checkpoint, or --exp-dir with --epoch/--avg; its tokens.txt for
the ONNX export), on real audio instead of tones (the first --num-utts
utterances of a synthetic-corpus split, egs/synth/ASR; their transcripts are
not used, only the compute time):

  OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive python benchmarks/streaming_benchmark.py \
      --exp-dir egs/synth/ASR/zipformer/exp --epoch 30 --avg 9 \
      --tokens egs/synth/ASR/data/lang_bpe_256/tokens.txt \
      --audio-dir egs/synth/ASR/data/audio/synth --split test --num-utts 100

Prints a markdown table; figures are medians over chunk steps and totals
over all utterances.  Nothing is asserted.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "zipformer"
sys.path.insert(0, str(RECIPE))
sys.path.insert(0, str(ROOT))

import model as zmodel  # noqa: E402
from icefall.beam_search import _decoder_proj  # noqa: E402
from icefall.checkpoint import add_checkpoint_arguments  # noqa: E402
from icefall.cli import UserError, make_parser, run_main  # noqa: E402
from icefall.streaming_decoder import StreamingDecoder  # noqa: E402
from icefall.streaming_features import OnlineFeatures  # noqa: E402
from streaming_decode import load_streaming_model  # noqa: E402

SMALL = ("--num-encoder-layers 2,2,2,2,2,2 --feedforward-dim 512,768,768,768,768,768 "
         "--encoder-dim 192,256,256,256,256,256 --encoder-unmasked-dim 192,192,192,192,192,192 "
         "--causal 1").split()


def get_parser():
    parser = make_parser(__doc__)
    parser.add_argument("--chunk-sizes", default="16,32",
                        help="chunk sizes at 50 Hz (16 = 320 ms)")
    parser.add_argument("--left-context-frames", type=int, default=128,
                        help="left context in 50 Hz frames")
    parser.add_argument("--num-utts", type=int, default=8,
                        help="number of utterances (tones, or the first of --audio-dir's split)")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="length of each utterance")
    parser.add_argument("--sherpa", type=int, default=1,
                        help="also time sherpa-onnx on the export")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a trained causal Zipformer, exported (a 'model' state_dict "
                        "and its config); default: a random model")
    parser.add_argument("--exp-dir", type=Path, default=None,
                        help="or its training checkpoints, selected by --epoch/--avg")
    add_checkpoint_arguments(parser)
    parser.add_argument("--tokens", type=Path, default=None,
                        help="tokens.txt of the trained model (needed with --checkpoint "
                        "or --exp-dir)")
    parser.add_argument("--audio-dir", type=Path, default=None,
                        help="a synthetic corpus (<audio-dir>/<split>.jsonl and "
                        "<split>/*.flac): decode its first --num-utts utterances "
                        "instead of tones of --seconds")
    parser.add_argument("--split", default="test",
                        help="the split of --audio-dir")
    return parser


def trained(args) -> bool:
    return args.checkpoint is not None or args.exp_dir is not None


def load_trained(args, chunk: int):
    """The model the checkpoint flags select, streaming with `chunk` and
    --left-context-frames (streaming_decode.load_streaming_model)."""
    parser = argparse.ArgumentParser()
    zmodel.add_model_arguments(parser)
    ns = parser.parse_args(["--chunk-size", str(chunk),
                            "--left-context-frames", str(args.left_context_frames)])
    for key in ("checkpoint", "exp_dir", "epoch", "iter", "avg", "use_averaged_model", "tokens"):
        setattr(ns, key, getattr(args, key))
    return load_streaming_model(ns)[0]


def corpus_waves(audio_dir: Path, split: str, num_utts: int):
    """Samples of the first `num_utts` utterances of a synthetic-corpus split."""
    from icefall.audio import read_audio
    from icefall.synth_corpus import read_plan

    utts = read_plan(audio_dir, split)[:num_utts]
    return [read_audio(audio_dir / split / f"{u.id}.flac", 16000) for u in utts]


def synthetic_wave(rng, seconds: float) -> np.ndarray:
    n = int(16000 * seconds)
    t = np.arange(n) / 16000
    w = sum(rng.rand() * np.clip(np.sin(2 * np.pi * (0.5 + 4 * rng.rand()) * t), 0, None)
            * np.sin(2 * np.pi * (100 + 2500 * rng.rand()) * t) for _ in range(6))
    return (0.05 * w + 0.003 * rng.randn(n)).astype(np.float32)


def features(wave):
    f = OnlineFeatures()
    f.accept_waveform(wave)
    f.input_finished()
    return torch.from_numpy(f.pop_frames())


def build(chunk: int, left: int, calib: torch.Tensor):
    parser = argparse.ArgumentParser()
    zmodel.add_model_arguments(parser)
    args = parser.parse_args(SMALL + ["--chunk-size", str(chunk),
                                      "--left-context-frames", str(left)])
    torch.manual_seed(0)
    model = zmodel.build_model(zmodel.config_from_args(args, vocab_size=500)).eval()
    with torch.no_grad():
        enc, _ = model.forward_encoder(calib[None], torch.tensor([calib.size(0)]))
        dec = _decoder_proj(model, [[-1, 0]], torch.device("cpu"))
        logits = model.joiner(model.joiner.encoder_proj(enc[0]), dec, project_input=False)
        gap = logits[:, 1:].max(dim=-1).values - logits[:, 0]
        model.joiner.output_linear.bias[0] += gap.quantile(0.6)
    return model


def run_pytorch(model, feats, chunk: int, batch: bool):
    decoder = StreamingDecoder(model, zmodel.stack_states, zmodel.unstack_states,
                               chunk_frames=2 * chunk)
    groups = [feats] if batch else [[f] for f in feats]
    times, total = [], 0.0
    with torch.no_grad():
        for group in groups:
            streams = []
            for i, f in enumerate(group):
                s = decoder.new_stream(str(i))
                s.accept_features(f)
                s.input_finished()
                streams.append(s)
            while streams:
                start = time.perf_counter()
                decoder.decode_chunk(streams)
                times.append(time.perf_counter() - start)
                streams = [s for s in streams if not s.done]
    return sum(times), statistics.median(times), max(times)


def run_sherpa(paths, waves, int8: bool):
    import sherpa_onnx

    kind = ".int8" if int8 else ""
    rec = sherpa_onnx.OnlineRecognizer.from_transducer(
        tokens=str(paths["tokens"]), encoder=str(paths[f"encoder{kind}"]),
        decoder=str(paths[f"decoder{kind}"]), joiner=str(paths[f"joiner{kind}"]),
        num_threads=1, sample_rate=16000, feature_dim=80, decoding_method="greedy_search")
    start = time.perf_counter()
    for w in waves:
        s = rec.create_stream()
        s.accept_waveform(16000, np.concatenate([w, np.zeros(4800, np.float32)]))
        s.input_finished()
        while rec.is_ready(s):
            rec.decode_stream(s)
        json.loads(rec.get_result_as_json_string(s))
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    torch.set_num_threads(1)
    if trained(args) and args.tokens is None:
        raise UserError("--tokens: give the trained model's tokens.txt")
    if args.audio_dir is not None:
        waves = corpus_waves(args.audio_dir, args.split, args.num_utts)
    else:
        rng = np.random.RandomState(0)
        waves = [synthetic_wave(rng, args.seconds) for _ in range(args.num_utts)]
    if not waves:
        raise UserError(f"--num-utts {args.num_utts}: no utterances to decode")
    feats = [features(w) for w in waves]
    audio = sum(len(w) for w in waves) / 16000
    source = f"{args.audio_dir}/{args.split}" if args.audio_dir is not None else "synthetic tones"
    what = (f"trained model {args.checkpoint or args.exp_dir}" if trained(args)
            else "random 'small' model")
    print(f"{len(waves)} utterances ({source}), {audio:.0f} s of audio; {what}; left context "
          f"{args.left_context_frames} frames; torch threads 1\n")
    print("| chunk | path | RTF | compute per chunk step (median / max) |")
    print("|---|---|---|---|")
    for chunk in [int(c) for c in args.chunk_sizes.split(",")]:
        if trained(args):
            try:
                model = load_trained(args, chunk)
            except ValueError as e:  # not causal, bad flags
                raise UserError(str(e)) from None
        else:
            model = build(chunk, args.left_context_frames, feats[0])
        ms = f"{2 * chunk * 10} ms"
        for batch in (False, True):
            total, med, mx = run_pytorch(model, feats, chunk, batch)
            what = f"PyTorch, {f'{len(feats)} streams batched' if batch else '1 stream'}"
            print(f"| {ms} | {what} | {total / audio:.3f} | "
                  f"{1000 * med:.1f} / {1000 * mx:.1f} ms |", flush=True)
        if args.sherpa:
            sys.path.insert(0, str(RECIPE))
            import importlib.util

            spec = importlib.util.spec_from_file_location(
                "export_streaming", RECIPE / "export-onnx-streaming.py")
            export = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(export)
            with tempfile.TemporaryDirectory() as tmp:
                if trained(args):
                    tokens = args.tokens
                else:
                    tokens = Path(tmp) / "tokens-src.txt"
                    tokens.write_text("".join(f"{'<blk>' if i == 0 else f't{i}'} {i}\n"
                                              for i in range(500)))
                try:
                    paths = export.export_streaming_onnx(model, Path(tmp), tokens=tokens)
                except ValueError as e:  # e.g. a front end sherpa-onnx cannot run
                    print(f"| {ms} | sherpa-onnx | - | not exported: {e} |", flush=True)
                    continue
                for int8 in (False, True):
                    total = run_sherpa(paths, waves, int8)
                    print(f"| {ms} | sherpa-onnx {'int8' if int8 else 'fp32'}, 1 stream | "
                          f"{total / audio:.3f} | - |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
