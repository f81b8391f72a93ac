#!/usr/bin/env python3
"""Average checkpoints and export the model's state_dict.

Usage, from egs/<dataset>/ASR:

  ./pruned_transducer_stateless3/export.py \\
      --exp-dir pruned_transducer_stateless3/exp \\
      --tokens data/lang_bpe_500/tokens.txt \\
      --epoch 30 --avg 9

writes <exp-dir>/pretrained.pt = {"model": state_dict, "config": {...}}: the
weights and the sizes that rebuild the model, without the optimizer and the
other training state, so about a fifth of a training checkpoint. It loads with
torch.load(..., weights_only=True). With --jit it also writes a TorchScript
<exp-dir>/cpu_jit.pt.
"""

import logging
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from icefall.threads import apply_num_threads, set_thread_env  # noqa: E402

set_thread_env()

import model as recipe_model  # noqa: E402
from icefall.checkpoint import add_checkpoint_arguments  # noqa: E402
from icefall.cli import check_inputs_exist, make_parser, run_main  # noqa: E402
from icefall.fsutil import megabytes  # noqa: E402
from icefall.model_loading import export_pretrained  # noqa: E402
from icefall.tokens import read_tokens  # noqa: E402
from icefall.utils import str2bool  # noqa: E402
from model import add_model_arguments  # noqa: E402


def get_parser():
    parser = make_parser(__doc__)
    parser.add_argument("--exp-dir", type=Path, default=Path("pruned_transducer_stateless3/exp"),
                        help="where the checkpoints are and pretrained.pt is written")
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"),
                        help="tokens.txt of the model")
    add_checkpoint_arguments(parser)
    parser.add_argument("--jit", type=str2bool, default=False, help="also write a TorchScript cpu_jit.pt (true/false)")
    add_model_arguments(parser)
    return parser


def run(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    apply_num_threads()
    check_inputs_exist(__file__, {"--exp-dir": args.exp_dir, "--tokens": args.tokens})
    tokens = read_tokens(args.tokens)
    model = export_pretrained(recipe_model, args, tokens, args.tokens, args.exp_dir / "pretrained.pt")
    if args.jit:
        from jit import export_jit

        jit_path = args.exp_dir / "cpu_jit.pt"
        export_jit(model, jit_path)
        logging.info(f"wrote {jit_path}: {megabytes(jit_path):.1f} MB")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The exit code: 0, or 2 after a one-line error (a bad file or flag)."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
