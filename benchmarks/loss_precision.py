#!/usr/bin/env python3
"""Float32 accuracy of the RNN-T losses' gradients on long sequences (not a
test).

Runs each function once in float32 and once on the float64 copies of the
same inputs, and prints max|g32 - g64| / max|g64| per gradient, the measure
../shared/reference/README.md gives k2 1.23.4's figures in (B=2, T=2000,
S=300: 3e-5 to 4.6e-4 depending on the function, 3.3e-3 with
delay_penalty 0.25).  Also prints the mass-conservation defect of the
recursion: in the regular topology with no boundary every path takes one
frame step per frame, so ``py_grad.sum(1)`` is exactly 1 for every (b, t);
the float32 deviation from 1 is shown.

Inputs as in k2_rnnt_cases: am ~ 1.5 N(0, 1), lm ~ N(0, 1), px/py ~
N(0, 1) - 1, symbols uniform over the non-blank classes, no boundary.
The pruned loss uses the ranges of the float64 smoothed loss in both dtypes,
so that only the loss itself is compared.

Usage (from the repository root):
  python benchmarks/loss_precision.py
  python benchmarks/loss_precision.py --frames 400 --symbols 100 \\
      --delay-penalty 0.5
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from icefall import rnnt_loss as L  # noqa: E402
from icefall.mutual_information import mutual_information_recursion  # noqa

FUNCTIONS = ("recursion", "simple", "smoothed", "pruned")


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref| (finite entries of ref)."""
    ok = torch.isfinite(ref)
    diff = (ours.double() - ref)[ok].abs().max()
    return (diff / ref[ok].abs().max()).item()


def make_inputs(B: int, T: int, S: int, C: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    return {
        "am": 1.5 * torch.randn(B, T, C, generator=g, dtype=f64),
        "lm": torch.randn(B, S + 1, C, generator=g, dtype=f64),
        "symbols": torch.randint(1, C, (B, S), generator=g),
        "px": torch.randn(B, S, T + 1, generator=g, dtype=f64) - 1,
        "py": torch.randn(B, S + 1, T, generator=g, dtype=f64) - 1,
    }


def gradients(name: str, x: dict, dtype: torch.dtype, delay_penalty: float,
              ranges: torch.Tensor) -> dict:
    """Gradients of the summed loss (scores for the recursion) w.r.t. the
    inputs, in ``dtype``."""
    leaf = {k: v.detach().to(dtype).clone().requires_grad_()
            for k, v in x.items()
            if v.is_floating_point()}
    common = dict(symbols=x["symbols"], termination_symbol=0,
                  delay_penalty=delay_penalty, reduction="sum")
    if name == "recursion":
        out = mutual_information_recursion(leaf["px"], leaf["py"])
        out.sum().backward()
        return {"px": leaf["px"].grad, "py": leaf["py"].grad}
    am, lm = leaf["am"], leaf["lm"]
    if name == "simple":
        loss = L.rnnt_loss_simple(lm=lm, am=am, **common)
    elif name == "smoothed":
        loss = L.rnnt_loss_smoothed(lm=lm, am=am, lm_only_scale=0.25,
                                    am_only_scale=0.0, **common)
    else:
        am_p, lm_p = L.do_rnnt_pruning(am=am, lm=lm, ranges=ranges)
        loss = L.rnnt_loss_pruned(logits=am_p + lm_p, ranges=ranges, **common)
    loss.backward()
    return {"am": am.grad, "lm": lm.grad}


def prune_ranges(x: dict, s_range: int) -> torch.Tensor:
    B, S = x["symbols"].shape
    T = x["am"].shape[1]
    _, (px_grad, py_grad) = L.rnnt_loss_smoothed(
        lm=x["lm"], am=x["am"], symbols=x["symbols"], termination_symbol=0,
        lm_only_scale=0.25, am_only_scale=0.0, reduction="sum",
        return_grad=True)
    boundary = torch.tensor([[0, 0, S, T]] * B)
    return L.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)


def mass_defect(x: dict) -> float:
    """max over (b, t) of |py_grad.sum(1) - 1| in float32."""
    _, (_, py_grad) = mutual_information_recursion(
        x["px"].float(), x["py"].float(), return_grad=True)
    return (py_grad.double().sum(1) - 1).abs().max().item()


def main() -> None:
    p = argparse.ArgumentParser(
        description="Float32 accuracy of the RNN-T losses' gradients "
        "against float64 on long sequences.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=2,
                   help="B, utterances")
    p.add_argument("--frames", type=int, default=2000,
                   help="T, frames")
    p.add_argument("--symbols", type=int, default=300,
                   help="S, symbols per utterance")
    p.add_argument("--classes", type=int, default=500,
                   help="C, vocabulary size")
    p.add_argument("--s-range", type=int, default=5,
                   help="s_range of the pruned loss's ranges")
    p.add_argument("--delay-penalty", type=float, default=0.0,
                   help="delay_penalty of the losses (the recursion is "
                   "skipped when > 0)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random inputs")
    p.add_argument("--only", nargs="*", choices=FUNCTIONS,
                   default=list(FUNCTIONS), help="functions to measure")
    args = p.parse_args()
    torch.set_num_threads(1)
    x = make_inputs(args.batch, args.frames, args.symbols, args.classes,
                    args.seed)
    print(f"B={args.batch} T={args.frames} S={args.symbols} "
          f"C={args.classes} delay_penalty={args.delay_penalty} "
          f"seed={args.seed}: max|g32 - g64| / max|g64|")
    ranges = prune_ranges(x, args.s_range)
    for name in args.only:
        if name == "recursion" and args.delay_penalty:
            continue  # the recursion takes no penalty
        g32 = gradients(name, x, torch.float32, args.delay_penalty, ranges)
        g64 = gradients(name, x, torch.float64, args.delay_penalty, ranges)
        errs = "  ".join(f"{k} {rel_err(g32[k], g64[k]):.2e}" for k in g64)
        print(f"{name:<10} {errs}", flush=True)
    if not args.delay_penalty:
        print(f"mass conservation: max |py_grad.sum(1) - 1| = "
              f"{mass_defect(x):.2e} (float32)")


if __name__ == "__main__":
    main()
