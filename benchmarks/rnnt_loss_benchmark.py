#!/usr/bin/env python3
"""Speed and peak memory of the pure-PyTorch RNN-T losses (not a test).

Measures forward + backward of each configuration at B=16, T=400, S=100,
C=500, float32, additive joiner (logits = am[:, :, None] + lm[:, None]),
torch.set_num_threads(2) by default:

  recursion  mutual_information_recursion alone (px, py given)
  simple     rnnt_loss_simple
  smoothed   rnnt_loss_smoothed (lm_only_scale 0.25, am_only_scale 0.0)
  pruned     simple + smoothed + get_rnnt_prune_ranges + do_rnnt_pruning
             + rnnt_loss_pruned (s_range 5), one backward through all
  full       rnnt_loss on the full [B, T, S+1, C] logits

Time: median of --runs warm runs (after one warm-up run).
Memory: increase of the resident-set high-water mark (VmHWM) over the
resident set just before the first run.  The mark is reset through
/proc/self/clear_refs before the runs, and every configuration runs in its
own fresh subprocess, so one configuration's peak cannot hide another's.

Before/after in one run: --baseline DIR (a copy of another commit, e.g.
``git archive <commit> icefall | tar -x -C DIR``) runs every configuration
--rounds times for DIR's icefall and for this one, taking turns, and prints
the median over rounds of each side's median and their ratio (this / DIR).

Usage (from the repository root):
  python benchmarks/rnnt_loss_benchmark.py                 # all configurations
  python benchmarks/rnnt_loss_benchmark.py --only recursion pruned
  python benchmarks/rnnt_loss_benchmark.py --only recursion --baseline /tmp/old
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ("recursion", "simple", "smoothed", "pruned", "full")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _make_step(name: str, B: int, T: int, S: int, C: int):
    """A closure running one forward + backward of configuration ``name``."""
    import torch

    from icefall import rnnt_loss as L
    from icefall.mutual_information import mutual_information_recursion

    g = torch.Generator().manual_seed(0)
    am = (1.5 * torch.randn(B, T, C, generator=g)).requires_grad_()
    lm = torch.randn(B, S + 1, C, generator=g).requires_grad_()
    symbols = torch.randint(1, C, (B, S), generator=g)
    boundary = torch.tensor([[0, 0, S, T]] * B)
    px = (torch.randn(B, S, T + 1, generator=g) - 1).requires_grad_()
    py = (torch.randn(B, S + 1, T, generator=g) - 1).requires_grad_()
    common = dict(symbols=symbols, termination_symbol=0, boundary=boundary,
                  reduction="sum")

    def recursion():
        mutual_information_recursion(px, py, boundary).sum().backward()

    def simple():
        L.rnnt_loss_simple(lm=lm, am=am, **common).backward()

    def smoothed():
        L.rnnt_loss_smoothed(lm=lm, am=am, lm_only_scale=0.25,
                             am_only_scale=0.0, **common).backward()

    def pruned():
        simple_loss = L.rnnt_loss_simple(lm=lm, am=am, **common)
        smooth_loss, (px_grad, py_grad) = L.rnnt_loss_smoothed(
            lm=lm, am=am, lm_only_scale=0.25, am_only_scale=0.0,
            return_grad=True, **common)
        ranges = L.get_rnnt_prune_ranges(px_grad, py_grad, boundary, 5)
        am_pruned, lm_pruned = L.do_rnnt_pruning(am=am, lm=lm, ranges=ranges)
        pruned_loss = L.rnnt_loss_pruned(logits=am_pruned + lm_pruned,
                                         ranges=ranges, **common)
        (simple_loss + smooth_loss + pruned_loss).backward()

    def full():
        logits = am[:, :, None, :] + lm[:, None, :, :]
        L.rnnt_loss(logits=logits, **common).backward()
        del logits

    def clear():
        for x in (am, lm, px, py):
            x.grad = None

    step = locals()[name]

    def run():
        clear()
        step()

    return run


def child(name: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.root or str(ROOT))
    run = _make_step(name, args.batch, args.frames, args.symbols,
                     args.classes)
    base_kb = _status_kb("VmRSS")
    reset_ok = _reset_peak()
    times = []
    for _ in range(args.runs + 1):  # the first run is the warm-up
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    peak_kb = _status_kb("VmHWM")
    return {
        "config": name,
        "threads": args.threads,
        "median_s": statistics.median(times[1:]),
        "min_s": min(times[1:]),
        "warmup_s": times[0],
        "peak_extra_mb": (peak_kb - base_kb) / 1024,
        "peak_reset": reset_ok,
    }


def run_child(name: str, args, root: Path = ROOT) -> dict:
    """One configuration in a fresh subprocess, with ``root``'s icefall."""
    cmd = [sys.executable, __file__, "--child", name,
           "--runs", str(args.runs if name != "full" else min(args.runs, 3)),
           "--threads", str(args.threads), "--batch", str(args.batch),
           "--frames", str(args.frames), "--symbols", str(args.symbols),
           "--classes", str(args.classes), "--root", str(root)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(args) -> None:
    base = Path(args.baseline).resolve()
    print(f"B={args.batch} T={args.frames} S={args.symbols} "
          f"C={args.classes} float32, {args.threads} threads; this tree vs "
          f"{base}, {args.rounds} rounds taking turns, median of the "
          f"rounds' medians of {args.runs} warm runs")
    print(f"{'config':<10} {'baseline s':>10} {'this s':>8} {'ratio':>6}")
    for name in args.only or CONFIGS:
        times = {"base": [], "this": []}
        for i in range(args.rounds):
            order = (("base", base), ("this", ROOT))
            for side, root in order if i % 2 == 0 else order[::-1]:
                times[side].append(run_child(name, args, root)["median_s"])
        b, t = (statistics.median(times[k]) for k in ("base", "this"))
        print(f"{name:<10} {b:10.3f} {t:8.3f} {t / b:6.2f}", flush=True)


def parent(args) -> None:
    if args.baseline:
        compare(args)
        return
    print(f"B={args.batch} T={args.frames} S={args.symbols} "
          f"C={args.classes} float32, {args.threads} threads, "
          f"median of {args.runs} warm runs")
    print(f"{'config':<10} {'median s':>9} {'min s':>8} {'peak extra MB':>14}")
    for name in args.only or CONFIGS:
        r = run_child(name, args)
        print(f"{name:<10} {r['median_s']:9.3f} {r['min_s']:8.3f} "
              f"{r['peak_extra_mb']:14.0f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", nargs="*", choices=CONFIGS,
                   default=list(CONFIGS), help="configurations to run")
    p.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--baseline", help="a directory holding another version's "
                   "icefall/ to compare with (see above)")
    p.add_argument("--rounds", type=int, default=5,
                   help="with --baseline: runs of each side, taking turns")
    p.add_argument("--runs", type=int, default=5,
                   help="timed warm runs per configuration (3 at most for "
                   "full)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch.set_num_threads")
    p.add_argument("--batch", type=int, default=16,
                   help="B, utterances")
    p.add_argument("--frames", type=int, default=400,
                   help="T, frames")
    p.add_argument("--symbols", type=int, default=100,
                   help="S, symbols per utterance")
    p.add_argument("--classes", type=int, default=500,
                   help="C, vocabulary size")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
    else:
        parent(args)


if __name__ == "__main__":
    main()
