#!/usr/bin/env python3
"""Average Zipformer checkpoints and export the model's state_dict.

Usage, from egs/<dataset>/ASR:

  ./zipformer/export.py --exp-dir zipformer/exp \\
      --tokens data/lang_bpe_500/tokens.txt --epoch 30 --avg 9

writes <exp-dir>/pretrained.pt = {"model": state_dict, "config": {...}}: the
weights and the sizes that rebuild the model, without the optimizer and the
other training state. It loads with torch.load(..., weights_only=True).
--epoch/--iter/--avg/--use-averaged-model select and average checkpoints as
icefall's export.py does. Decode it with ./zipformer/pretrained.py, or with
./zipformer/decode.py through a symlink:

  ln -s pretrained.pt zipformer/exp/epoch-9999.pt
  ./zipformer/decode.py --epoch 9999 --avg 1 --use-averaged-model False ...

icefall's own training checkpoints (epoch-N.pt) are read too; they carry no
config, so give the size flags of the model they hold (defaults: icefall's).
"""

import logging
import sys
from pathlib import Path
from typing import List, Optional

RECIPE = Path(__file__).resolve().parent
sys.path.insert(0, str(RECIPE))
sys.path.insert(0, str(RECIPE.parents[3]))  # the repository root, for `icefall`

from icefall.threads import apply_num_threads, set_thread_env  # noqa: E402

set_thread_env()

from icefall.cli import check_inputs_exist, make_parser, run_main  # noqa: E402


def get_parser():
    from icefall.checkpoint import add_checkpoint_arguments
    from model import add_model_arguments

    parser = make_parser(__doc__)
    parser.add_argument("--exp-dir", type=Path, default=Path("zipformer/exp"),
                        help="where the checkpoints are and pretrained.pt is written")
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"),
                        help="tokens.txt of the model")
    add_checkpoint_arguments(parser)
    add_model_arguments(parser)
    return parser


def run(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    apply_num_threads()
    check_inputs_exist(__file__, {"--exp-dir": args.exp_dir, "--tokens": args.tokens})

    import model
    from icefall.model_loading import export_pretrained
    from icefall.tokens import read_tokens

    tokens = read_tokens(args.tokens)
    export_pretrained(model, args, tokens, args.tokens, args.exp_dir / "pretrained.pt")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The exit code: 0, or 2 after a one-line error (a bad file or flag)."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
