#!/usr/bin/env python3
"""Decode the recipe's test sets with a Zipformer and report the WER.

Usage, from egs/<dataset>/ASR:

  # the average of epochs 21..30 via the running-average model
  ./zipformer/decode.py --epoch 30 --avg 9 --exp-dir zipformer/exp \\
      --max-duration 600 --decoding-method modified_beam_search --beam-size 4

  # a model trained with --use-ctc 1: its CTC head
  ./zipformer/decode.py --epoch 30 --avg 9 --exp-dir zipformer/exp \\
      --decoding-method ctc-prefix-beam-search --beam-size 4

  # an exported pretrained.pt (or icefall's), through a symlink:
  #   ln -s pretrained.pt zipformer/exp/epoch-9999.pt
  ./zipformer/decode.py --epoch 9999 --avg 1 --use-averaged-model False \\
      --exp-dir zipformer/exp ...

Methods: greedy_search, beam_search, modified_beam_search (transducer head)
and ctc-greedy-search, ctc-prefix-beam-search (CTC head). Writes
recogs-<set>-<key>-<suffix>.txt, errs-... and wer-summary-... into
<exp-dir>/<decoding-method>/ (see icefall/decode_script.py), and logs the WER
and the real-time factor. Test cuts too short for the model are dropped with
a logged count. Checkpoints written by our train.py carry their config; for
icefall's own files the size flags below describe the model (the defaults
are icefall's). A causal model (--causal 1) decodes with one chunk size and
left context, as icefall's decode.py: give --chunk-size and
--left-context-frames one value each (50 Hz frames, e.g. 32 and 256).
"""

import sys
from pathlib import Path
from typing import List, Optional

RECIPE = Path(__file__).resolve().parent
sys.path.insert(0, str(RECIPE))
sys.path.insert(0, str(RECIPE.parents[3]))  # the repository root, for `icefall`

from icefall.threads import set_thread_env  # noqa: E402

set_thread_env()

from icefall.cli import make_parser, run_main  # noqa: E402


def get_parser():
    from icefall.asr_datamodule import AsrDataModule
    from icefall.decode_script import add_decode_arguments
    from icefall.decoding import ALL_METHODS
    from model import add_model_arguments

    parser = make_parser(__doc__)
    add_decode_arguments(parser, "zipformer/exp", ALL_METHODS)
    add_model_arguments(parser)
    AsrDataModule.add_arguments(parser)
    return parser


def set_chunking(model, args) -> str:
    """A causal model decodes with the single --chunk-size/--left-context-frames
    given (in eval it would otherwise draw one of its training values at
    random); returns the result files' suffix part for it ('' if not causal).
    Raises UserError (one line) for a list of values."""
    from icefall.cli import UserError

    if not model.encoder.causal:
        return ""
    values = {}
    for flag, value in (("--chunk-size", args.chunk_size), ("--left-context-frames", args.left_context_frames)):
        parts = str(value).split(",")
        if len(parts) != 1 or int(parts[0]) == 0:
            raise UserError(f"{flag} {value}: a causal model decodes with one value (e.g. --chunk-size 32 "
                            "--left-context-frames 256)")
        values[flag] = int(parts[0])
    chunk, left = values["--chunk-size"], values["--left-context-frames"]
    model.encoder.chunk_size, model.encoder.left_context_frames = (chunk,), (left,)
    return f"-chunk-{chunk}-left-context-{left}"


def run(argv: Optional[List[str]] = None) -> int:
    import model
    from icefall.decode_script import decode_main

    return decode_main(get_parser().parse_args(argv), model, __file__, configure=set_chunking)


def main(argv: Optional[List[str]] = None) -> int:
    """The exit code: 0, or 2 after a one-line error (a bad file or flag)."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
