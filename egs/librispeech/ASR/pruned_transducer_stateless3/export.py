#!/usr/bin/env python3
"""Average checkpoints and export the model's state_dict.

Usage, from egs/<dataset>/ASR:

  ./pruned_transducer_stateless3/export.py \\
      --exp-dir pruned_transducer_stateless3/exp \\
      --tokens data/lang_bpe_500/tokens.txt \\
      --epoch 30 --avg 9

writes <exp-dir>/pretrained.pt = {"model": state_dict, "config": {...}}: the
weights and the sizes that rebuild the model, without the optimizer and the
other training state, so about a third of a checkpoint. It loads with
torch.load(..., weights_only=True). With --jit it also writes a TorchScript
<exp-dir>/cpu_jit.pt.
"""

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from icefall.checkpoint import atomic_save, read_config, select_checkpoints  # noqa: E402
from icefall.tokens import check_tokens_fit_model, read_tokens  # noqa: E402
from icefall.utils import str2bool  # noqa: E402
from model import add_model_arguments, build_model, config_from_args  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", type=Path, default=Path("pruned_transducer_stateless3/exp"))
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"))
    parser.add_argument("--epoch", type=int, default=30, help="the last epoch to use (epoch-N.pt)")
    parser.add_argument("--iter", type=int, default=0, help="if > 0, use checkpoint-N.pt files instead of epochs")
    parser.add_argument("--avg", type=int, default=9, help="number of checkpoints to average")
    parser.add_argument(
        "--use-averaged-model", type=str2bool, default=True,
        help="use the running-average models of epoch-(N-avg).pt and epoch-N.pt",
    )
    parser.add_argument("--jit", type=str2bool, default=False, help="also write a TorchScript cpu_jit.pt")
    add_model_arguments(parser)
    return parser


def _megabytes(path: Path) -> float:
    return path.stat().st_size / 2**20


def main() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args()
    tokens = read_tokens(args.tokens)
    selection = select_checkpoints(args.exp_dir, args.epoch, args.iter, args.avg, args.use_averaged_model)
    for f in selection.files:
        if f.exists():
            logging.info(f"input {f}: {_megabytes(f):.1f} MB")
    state_dict = selection.load_state_dict()
    config = read_config(selection.files[-1]) or config_from_args(args, vocab_size=len(tokens))
    check_tokens_fit_model(tokens, config["vocab_size"], args.tokens)
    model = build_model(config)
    model.load_state_dict(state_dict, strict=True)  # fails loudly on a mismatch
    model.eval()

    out = args.exp_dir / "pretrained.pt"
    atomic_save({"model": model.state_dict(), "config": config}, out)
    logging.info(f"wrote {out}: {_megabytes(out):.1f} MB ({selection.mode} of {len(selection.files)} file(s))")
    if args.jit:
        from jit import export_jit

        jit_path = args.exp_dir / "cpu_jit.pt"
        export_jit(model, jit_path)
        logging.info(f"wrote {jit_path}: {_megabytes(jit_path):.1f} MB")


if __name__ == "__main__":
    main()
