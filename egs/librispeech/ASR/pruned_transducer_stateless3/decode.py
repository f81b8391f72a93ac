#!/usr/bin/env python3
"""Decode the recipe's test sets and report the WER.

Usage, from egs/<dataset>/ASR:

  # the average of epochs 26..30 via the running-average model
  ./pruned_transducer_stateless3/decode.py --epoch 30 --avg 5 \\
      --exp-dir pruned_transducer_stateless3/exp --max-duration 600 \\
      --decoding-method modified_beam_search --beam-size 4

  # an exported pretrained.pt, through a symlink:
  #   ln -s pretrained.pt pruned_transducer_stateless3/exp/epoch-9999.pt
  ./pruned_transducer_stateless3/decode.py --epoch 9999 --avg 1 \\
      --use-averaged-model False --exp-dir pruned_transducer_stateless3/exp ...

Writes recogs-<set>-<key>-<suffix>.txt, errs-... and wer-summary-... into
<exp-dir>/<decoding-method>/, and logs the WER and the real-time factor.
<key> is greedy_search (one token per frame at most, icefall's default),
greedy_search_max_sym_per_frame_<N> or beam_size_<N>.
"""

import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from icefall.threads import set_thread_env  # noqa: E402

set_thread_env()

from icefall.cli import make_parser, run_main  # noqa: E402


def get_parser():
    from icefall.asr_datamodule import AsrDataModule
    from icefall.decoding import ALL_METHODS
    from icefall.decode_script import add_decode_arguments
    from model import add_model_arguments

    parser = make_parser(__doc__)
    add_decode_arguments(parser, "pruned_transducer_stateless3/exp", ALL_METHODS)
    add_model_arguments(parser)
    AsrDataModule.add_arguments(parser)
    return parser


def run(argv: Optional[List[str]] = None) -> int:
    import model
    from icefall.decode_script import decode_main

    return decode_main(get_parser().parse_args(argv), model, __file__)


def main(argv: Optional[List[str]] = None) -> int:
    """The exit code: 0, or 2 after a one-line error (a bad file or flag)."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
