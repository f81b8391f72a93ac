#!/usr/bin/env python3
"""Transcribe sound files with an exported model.

Usage:

  ./pruned_transducer_stateless3/pretrained.py \\
      --checkpoint pruned_transducer_stateless3/exp/pretrained.pt \\
      --tokens data/lang_bpe_500/tokens.txt \\
      --method greedy_search \\
      a.wav b.flac

prints, for each file, ``filename:`` and the transcript on the next line.
Files at other sample rates are resampled to 16 kHz, multi-channel files use
the first channel. Short files are decoded in batches of at most
--max-duration seconds; a file longer than --chunk-duration is decoded alone,
in overlapping chunks, so memory stays bounded (a 1-hour file needs well under
2 GB) and its progress is logged. A file that cannot be used (unreadable, too
short, NaN samples, a directory, ...) gets a one-line error and the other
files are still decoded; the exit code is then 1. Errors in the model or
tokens give one line and exit code 2.

Our exports carry their config; icefall's own pretrained.pt files carry
none, and are read with the model-size flags (the defaults are icefall's
LibriSpeech model).
"""

import logging
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from icefall.threads import apply_num_threads, set_thread_env  # noqa: E402

set_thread_env()  # before torch is imported

from icefall.cli import (add_device_argument, check_inputs_exist, device_from_flag,  # noqa: E402
                         make_parser, run_main)
from icefall.transcribe import add_transcribe_arguments, transcribe_and_print  # noqa: E402
from model import add_model_arguments, load_model  # noqa: E402


def get_parser():
    from icefall.decoding import ALL_METHODS

    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="exported pretrained.pt (or any single checkpoint)")
    parser.add_argument("--tokens", type=Path, required=True, help="tokens.txt of the model")
    parser.add_argument("--method", choices=ALL_METHODS, default="greedy_search",
                        help="decoding method (the CTC ones need a model trained with --use-ctc true)")
    parser.add_argument("--beam-size", type=int, default=4, help="beam searches only")
    parser.add_argument("--max-sym-per-frame", type=int, default=1, help="greedy_search only")
    add_device_argument(parser)
    add_transcribe_arguments(parser)
    add_model_arguments(parser)
    return parser


def transcribe(model, tokens, waves: List, method: str, beam: int, max_sym: int, device) -> List[str]:
    """Decode a batch of 16 kHz waveforms in one go; returns one transcript each."""
    from icefall.torch_backend import TorchBackend

    backend = TorchBackend(model, model.frames_after_subsampling, method, beam, max_sym, device)
    return [tokens.decode(h) for h in backend.search(backend.encode(backend.features(waves)))]


def run(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    apply_num_threads()
    check_inputs_exist(__file__, {"--checkpoint": args.checkpoint, "--tokens": args.tokens})

    from icefall.tokens import read_tokens
    from icefall.torch_backend import TorchBackend

    device = device_from_flag(args.device)
    tokens = read_tokens(args.tokens)
    model = load_model(args, tokens, args.tokens).to(device)
    logging.info(f"decoding {len(args.sound_files)} file(s) with {args.method} on {device}")

    backend = TorchBackend(model, model.frames_after_subsampling, args.method, args.beam_size,
                           args.max_sym_per_frame, device)
    return transcribe_and_print(backend, args, tokens.decode)


def main(argv: Optional[List[str]] = None) -> int:
    """The exit code: 0, 1 (some files could not be decoded) or 2 (a user error, one line)."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
