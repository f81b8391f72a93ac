#!/usr/bin/env python3
"""Transcribe sound files with an exported Zipformer.

Usage:

  ./zipformer/pretrained.py --checkpoint zipformer/exp/pretrained.pt \\
      --tokens data/lang_bpe_500/tokens.txt --method greedy_search \\
      a.wav b.flac

prints, for each file, ``filename:`` and the transcript on the next line.
Methods: greedy_search, beam_search, modified_beam_search (transducer head),
ctc-greedy-search, ctc-prefix-beam-search (CTC head, --use-ctc 1 models).
Files at other sample rates are resampled to 16 kHz, multi-channel files use
the first channel. Short files are decoded in batches of at most
--max-duration seconds; a file longer than --chunk-duration is decoded alone,
in overlapping chunks, so memory stays bounded (icefall/transcribe.py). A
file that cannot be used gets a one-line error and the other files are still
decoded; the exit code is then 1. Errors in the model or tokens give one line
and exit code 2.

Our exports carry their config; icefall's own pretrained.pt files (and its
training checkpoints) carry none and are read with the model-size flags
below, whose defaults are icefall's LibriSpeech Zipformer; e.g. for a model
trained with CTC too, add --use-ctc 1. A causal model (--causal 1) decodes
with the one --chunk-size and --left-context-frames given.
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

from icefall.cli import (add_device_argument, check_inputs_exist, device_from_flag,  # noqa: E402
                         make_parser, run_main)


def get_parser():
    from icefall.decoding import ALL_METHODS
    from icefall.transcribe import add_transcribe_arguments
    from model import add_model_arguments

    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="exported pretrained.pt, icefall's, or any single checkpoint")
    parser.add_argument("--tokens", type=Path, required=True, help="tokens.txt of the model")
    parser.add_argument("--method", choices=ALL_METHODS, default="greedy_search", help="decoding method")
    parser.add_argument("--beam-size", type=int, default=4, help="beam searches only (transducer and CTC)")
    parser.add_argument("--max-sym-per-frame", type=int, default=1, help="greedy_search only")
    add_device_argument(parser)
    add_transcribe_arguments(parser)
    add_model_arguments(parser)
    return parser


def run(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    apply_num_threads()
    check_inputs_exist(__file__, {"--checkpoint": args.checkpoint, "--tokens": args.tokens})

    import model as recipe_model
    from icefall.model_loading import load_model
    from icefall.tokens import read_tokens
    from icefall.torch_backend import TorchBackend
    from icefall.transcribe import transcribe_and_print

    device = device_from_flag(args.device)
    tokens = read_tokens(args.tokens)
    model = load_model(recipe_model, args, tokens, args.tokens).to(device)
    from decode import set_chunking

    set_chunking(model, args)  # a causal model: the one chunk size and left context given
    logging.info(f"decoding {len(args.sound_files)} file(s) with {args.method} on {device}")

    backend = TorchBackend(model, recipe_model.frames_after_subsampling, args.method,
                           args.beam_size, args.max_sym_per_frame, device)
    return transcribe_and_print(backend, args, tokens.decode)


def main(argv: Optional[List[str]] = None) -> int:
    """The exit code: 0, 1 (some files could not be decoded) or 2 (a user error, one line)."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
