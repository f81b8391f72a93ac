#!/usr/bin/env python3
"""Streaming Zipformer speed: real-time factor and compute per chunk.

For each chunk size: our PyTorch streaming decoder (icefall/streaming_decoder.py,
greedy search) on one stream at a time and on all utterances as a batch of
streams, and sherpa-onnx's OnlineRecognizer on the streaming ONNX export
(fp32 and int8), all on the same synthetic audio.  The model is icefall's
"small" Zipformer sizes with --causal 1 (random weights, vocab 500, its blank
logit raised so that about 60% of frames are blank: search cost is realistic).

  OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive python benchmarks/streaming_benchmark.py

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
from icefall.streaming_decoder import StreamingDecoder  # noqa: E402
from icefall.streaming_features import OnlineFeatures  # noqa: E402

SMALL = ("--num-encoder-layers 2,2,2,2,2,2 --feedforward-dim 512,768,768,768,768,768 "
         "--encoder-dim 192,256,256,256,256,256 --encoder-unmasked-dim 192,192,192,192,192,192 "
         "--causal 1").split()


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk-sizes", default="16,32",
                        help="chunk sizes at 50 Hz (16 = 320 ms) (default: %(default)s)")
    parser.add_argument("--left-context-frames", type=int, default=128,
                        help="(default: %(default)s)")
    parser.add_argument("--num-utts", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="length of each utterance (default: %(default)s)")
    parser.add_argument("--sherpa", type=int, default=1,
                        help="also time sherpa-onnx on the export (default: %(default)s)")
    return parser


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


def main():
    args = get_parser().parse_args()
    torch.set_num_threads(1)
    rng = np.random.RandomState(0)
    waves = [synthetic_wave(rng, args.seconds) for _ in range(args.num_utts)]
    feats = [features(w) for w in waves]
    audio = sum(len(w) for w in waves) / 16000
    print(f"{args.num_utts} utterances, {audio:.0f} s of audio; left context "
          f"{args.left_context_frames} frames; torch threads 1\n")
    print("| chunk | path | RTF | compute per chunk step (median / max) |")
    print("|---|---|---|---|")
    for chunk in [int(c) for c in args.chunk_sizes.split(",")]:
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
                tokens = Path(tmp) / "tokens-src.txt"
                tokens.write_text("".join(f"{'<blk>' if i == 0 else f't{i}'} {i}\n"
                                          for i in range(500)))
                paths = export.export_streaming_onnx(model, Path(tmp), tokens=tokens)
                for int8 in (False, True):
                    total = run_sherpa(paths, waves, int8)
                    print(f"| {ms} | sherpa-onnx {'int8' if int8 else 'fp32'}, 1 stream | "
                          f"{total / audio:.3f} | - |", flush=True)


if __name__ == "__main__":
    main()
