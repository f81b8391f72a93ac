#!/usr/bin/env python3
"""Decode-like work with 1 or 2 threads, default or passive OpenMP waiting
(not a test).

The work: the committed synth model (test/data/synth_small, 2.7 M
parameters) runs its encoder and batched greedy search on --batch random
utterances of --seconds seconds of 80-dim features, --iters times after one
warm-up.  Each setting runs in a fresh subprocess (the wait policy is read
when torch loads OpenMP), and the settings take turns for --rounds rounds so
that the machine's changing load hits all of them alike.  Prints each
setting's median real-time factor (processing time / audio time) and its
ratio to the first setting.

Usage (from the repository root):
  python benchmarks/thread_benchmark.py
  python benchmarks/thread_benchmark.py --rounds 5 --busy 1  # + 1 spinner
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "pruned_transducer_stateless3"
MODEL = ROOT / "test" / "data" / "synth_small" / "pretrained.pt"
SETTINGS = (("1 thread, default", 1, None),
            ("1 thread, passive", 1, "passive"),
            ("2 threads, default", 2, None),
            ("2 threads, passive", 2, "passive"))


def child(args) -> dict:
    import torch

    sys.path[:0] = [str(ROOT), str(RECIPE)]
    from icefall.beam_search import greedy_search_batch
    from model import build_model

    torch.set_num_threads(args.threads)
    ckpt = torch.load(MODEL, weights_only=True)
    model = build_model(ckpt["config"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in ckpt["model"].items()})
    model.eval()
    g = torch.Generator().manual_seed(0)
    frames = int(args.seconds * 100)
    x = torch.randn(args.batch, frames, 80, generator=g)
    x_lens = torch.full((args.batch,), frames, dtype=torch.int64)
    times = []
    with torch.inference_mode():
        for _ in range(args.iters + 1):  # the first is the warm-up
            t0 = time.perf_counter()
            enc, enc_lens = model.encoder(x, x_lens)
            greedy_search_batch(model, enc, enc_lens)
            times.append(time.perf_counter() - t0)
    audio = args.batch * args.seconds
    return {"rtf": statistics.median(times[1:]) / audio,
            "threads": torch.get_num_threads()}


def run_setting(args, threads: int, policy) -> float:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("OMP_NUM_THREADS", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, __file__, "--child", "--threads", str(threads),
           "--batch", str(args.batch), "--seconds", str(args.seconds),
           "--iters", str(args.iters)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True,
                         text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["threads"] == threads, r
    return r["rtf"]


def parent(args) -> None:
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.busy)]
    try:
        rtfs = {name: [] for name, _, _ in SETTINGS}
        loads = []
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for name, threads, policy in SETTINGS:
                rtfs[name].append(run_setting(args, threads, policy))
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    print(f"{args.batch} x {args.seconds} s per batch, median of {args.iters} "
          f"batches, {args.rounds} rounds, {args.busy} extra spinning "
          f"process(es); 1-min load average at the rounds' starts: "
          + ", ".join(f"{x:.1f}" for x in loads))
    base = statistics.median(rtfs[SETTINGS[0][0]])
    print(f"{'setting':<20} {'median RTF':>10} {'min RTF':>8} {'ratio':>6}")
    for name, values in rtfs.items():
        med = statistics.median(values)
        print(f"{name:<20} {med:10.4f} {min(values):8.4f} {med / base:6.2f}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=3,
                   help="times every setting runs, taking turns")
    p.add_argument("--iters", type=int, default=5,
                   help="timed batches per run (after one warm-up)")
    p.add_argument("--batch", type=int, default=4, help="utterances per batch")
    p.add_argument("--seconds", type=float, default=8.0,
                   help="duration of each utterance")
    p.add_argument("--busy", type=int, default=0,
                   help="extra processes spinning on the CPU during the runs")
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
    else:
        parent(args)


if __name__ == "__main__":
    main()
