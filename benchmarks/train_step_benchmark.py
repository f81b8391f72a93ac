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
"""

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "egs/librispeech/ASR/pruned_transducer_stateless3"))
sys.path.insert(0, str(REPO))

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=400, help="T after subsampling")
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare", action="store_true",
                        help="time float32 against bfloat16 autocast, with both front ends")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    B, T, S = args.batch, args.frames, args.symbols
    x = torch.randn(B, 4 * T + 7, 80)  # ((T_in - 7) // 2 + 1) // 2 = T
    x_lens = torch.full((B,), x.size(1))
    y = torch.randint(1, args.vocab, (B, S)).tolist()

    def make_step(bf16: bool = False, channels=(8, 32, 128)):
        torch.manual_seed(0)
        model = build_model({**SMALL, "vocab_size": args.vocab,
                             "subsampling_channels": list(channels)}).train()
        optimizer = Eve(model.parameters(), lr=1e-3)

        def step():
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with autocast:
                simple, pruned = model(x, x_lens, y, prune_range=5, am_scale=0.0, lm_scale=0.25,
                                       warmup=2.0)
            (0.5 * simple + pruned).backward()
            optimizer.step()
            optimizer.zero_grad()

        return step, model

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


if __name__ == "__main__":
    main()
