#!/usr/bin/env python3
"""What share of a training step the mutual-information recursion takes.

Times one full training step (forward + backward + optimizer) of the synth
recipe's small pruned_transducer_stateless3 (the run.sh sizes) and, at the
same sizes, the recursion alone (forward + backward), and prints both.

  python benchmarks/train_step_benchmark.py            # B=16, T=400 after subsampling, S=100
  python benchmarks/train_step_benchmark.py --threads 1

With --compare, it times the step instead in float32 and in bfloat16
autocast (as train.py --use-bf16), with icefall's front end (8,32,128) and
run.sh's lighter one (4,16,64), and prints the four times and their ratios
to float32 with icefall's front end (measured in the same run).

With --varying-shapes, it times run.sh's step (bfloat16 autocast, front end
4,16,64, modified topology) on batches whose shapes change from step to
step as real ones do (a padded length of 150-580 fbank frames, as many
utterances as fit in 25 s), once for each oneDNN primitive-cache capacity in
--capacities (each in a fresh process: the capacity is read when torch
first uses oneDNN), and prints the mean step of the second half of --steps
(the cache is warm by then):

  python benchmarks/train_step_benchmark.py --varying-shapes --threads 1
"""

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "egs/librispeech/ASR/pruned_transducer_stateless3"))
sys.path.insert(0, str(REPO))

from icefall.cli import HelpFormatter  # noqa: E402
from icefall.mutual_information import mutual_information_recursion  # noqa: E402
from icefall.optim import Eve  # noqa: E402
from model import build_model  # noqa: E402

SMALL = dict(feature_dim=80, subsampling_factor=4, encoder_dim=144, nhead=4, dim_feedforward=576,
             num_encoder_layers=4, decoder_dim=256, joiner_dim=256, context_size=2, blank_id=0)


def median_time(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_model(vocab: int, channels, **options):
    """run.sh's model sizes (seeded) with ``options``, and an Eve optimizer."""
    torch.manual_seed(0)
    model = build_model({**SMALL, "vocab_size": vocab, "subsampling_channels": list(channels),
                         **options}).train()
    return model, Eve(model.parameters(), lr=1e-3)


def train_step(model, optimizer, x, x_lens, y, bf16: bool) -> None:
    """Forward (in bfloat16 autocast if ``bf16``), backward and optimizer step."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        simple, pruned = model(x, x_lens, y, prune_range=5, am_scale=0.0, lm_scale=0.25, warmup=2.0)
    (0.5 * simple + pruned).backward()
    optimizer.step()
    optimizer.zero_grad()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="utterances in the batch")
    parser.add_argument("--frames", type=int, default=400, help="T after subsampling")
    parser.add_argument("--symbols", type=int, default=100, help="tokens per utterance")
    parser.add_argument("--vocab", type=int, default=256, help="vocabulary size")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (the median is printed)")
    parser.add_argument("--compare", action="store_true",
                        help="time float32 against bfloat16 autocast, with both front ends")
    parser.add_argument("--varying-shapes", action="store_true",
                        help="time steps on batches of changing shapes, per oneDNN cache capacity")
    parser.add_argument("--capacities", default="1024,65536",
                        help="--varying-shapes: ONEDNN_PRIMITIVE_CACHE_CAPACITY values (1024: oneDNN's default)")
    parser.add_argument("--steps", type=int, default=200, help="--varying-shapes: steps per capacity")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.varying_shapes:
        return varying_shapes(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    B, T, S = args.batch, args.frames, args.symbols
    x = torch.randn(B, 4 * T + 7, 80)  # ((T_in - 7) // 2 + 1) // 2 = T
    x_lens = torch.full((B,), x.size(1))
    y = torch.randint(1, args.vocab, (B, S)).tolist()

    def make_step(bf16: bool = False, channels=(8, 32, 128)):
        model, optimizer = make_model(args.vocab, channels)
        return (lambda: train_step(model, optimizer, x, x_lens, y, bf16)), model

    if args.compare:
        print(f"B={B} T={T} S={S} vocab={args.vocab} threads={args.threads}: training step")
        base = None
        for bf16 in (False, True):
            for channels in ((8, 32, 128), (4, 16, 64)):
                t = median_time(make_step(bf16, channels)[0], args.runs)
                base = base or t
                print(f"  {'bfloat16 autocast' if bf16 else 'float32          '}  front end "
                      f"{','.join(map(str, channels)):9s}  {t:.3f} s  ({base / t:.2f}x)")
        return

    step, model = make_step()

    px = (torch.randn(B, S, T + 1) - 1).requires_grad_()
    py = (torch.randn(B, S + 1, T) - 1).requires_grad_()

    def recursion():
        mutual_information_recursion(px, py).sum().backward()

    t_step = median_time(step, args.runs)
    t_rec = median_time(recursion, 5 * args.runs)
    print(f"B={B} T={T} S={S} vocab={args.vocab} threads={args.threads}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"training step (forward + backward + optimizer): {t_step:.3f} s")
    print(f"mutual_information_recursion (forward + backward): {t_rec:.4f} s "
          f"= {100 * t_rec / t_step:.1f}% of the step (the step runs it twice: simple and pruned loss)")


def varying_shapes(args) -> None:
    """Parent: one child process per capacity. Child: time the steps."""
    if not args.child:
        print(f"run.sh's training step on batches of varying shape, {args.steps} steps, "
              f"threads={args.threads}; mean of the second half")
        base = None
        for capacity in args.capacities.split(","):
            env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": capacity}
            out = subprocess.run([sys.executable, __file__, "--varying-shapes", "--child",
                                  "--threads", str(args.threads), "--steps", str(args.steps)],
                                 env=env, capture_output=True, text=True, check=True)
            t = float(out.stdout.split()[-1])
            base = base or t
            print(f"  cache capacity {capacity:>6}: {1000 * t:.0f} ms a step ({base / t:.2f}x)")
        return
    torch.set_num_threads(args.threads)
    model, optimizer = make_model(256, (4, 16, 64), dropout=0.0, layer_dropout=0.0, rnnt_type="modified")
    rng = random.Random(0)
    times = []
    for _ in range(args.steps):
        frames = rng.randint(150, 580)
        batch = max(1, 2500 // frames)
        x = torch.randn(batch, frames, 80)
        y = torch.randint(1, 256, (batch, frames // 15)).tolist()
        start = time.perf_counter()
        train_step(model, optimizer, x, torch.full((batch,), frames), y, bf16=True)
        times.append(time.perf_counter() - start)
    print(statistics.mean(times[len(times) // 2:]))


if __name__ == "__main__":
    main()
