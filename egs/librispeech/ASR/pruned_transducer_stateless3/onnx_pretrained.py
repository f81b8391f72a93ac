#!/usr/bin/env python3
"""Transcribe sound files with the ONNX files of export-onnx.py, without torch.

Usage:

  ./pruned_transducer_stateless3/onnx_pretrained.py \\
      --encoder pruned_transducer_stateless3/exp/encoder.onnx \\
      --decoder pruned_transducer_stateless3/exp/decoder.onnx \\
      --joiner pruned_transducer_stateless3/exp/joiner.onnx \\
      --tokens pruned_transducer_stateless3/exp/tokens.txt \\
      --method greedy_search \\
      a.wav b.flac

(the *.int8.onnx files work the same way). Prints, as pretrained.py does, for
each file ``filename:`` and the transcript on the next line, then an empty
line. Features come from kaldi-native-fbank with the settings of our
training features (see icefall/onnx_decode.py); the run needs onnxruntime,
numpy, soundfile and kaldi-native-fbank, not torch. Batching by
--max-duration and chunked decoding of long files are as in pretrained.py.
The three files must come from one export-onnx.py run (their metadata
carry a shared export id). A file that cannot be used gets a one-line error
and the exit code 1; the other files are decoded.
"""

import logging
import sys
from pathlib import Path
from typing import List, Optional

# The repository root, for `icefall` when it is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from icefall.threads import set_thread_env  # noqa: E402

set_thread_env()  # OpenMP waiting policy (no torch here: onnxruntime has --num-threads)

from icefall.cli import UserError, check_inputs_exist, make_parser, run_main  # noqa: E402
from icefall.onnx_decode import DECODERS, OnnxBackend, OnnxTransducer, skip_ids_for  # noqa: E402
from icefall.tokens import check_tokens_fit_model, read_tokens  # noqa: E402
from icefall.transcribe import add_transcribe_arguments, transcribe_and_print  # noqa: E402


def get_parser():
    parser = make_parser(__doc__)
    parser.add_argument("--encoder", type=Path, required=True, help="encoder.onnx (or encoder.int8.onnx)")
    parser.add_argument("--decoder", type=Path, required=True, help="decoder.onnx")
    parser.add_argument("--joiner", type=Path, required=True, help="joiner.onnx")
    parser.add_argument("--tokens", type=Path, required=True, help="tokens.txt of the model")
    parser.add_argument("--method", choices=sorted(DECODERS), default="greedy_search", help="decoding method")
    parser.add_argument("--beam-size", type=int, default=4, help="modified_beam_search only")
    parser.add_argument("--num-threads", type=int, default=1, help="onnxruntime threads per session")
    add_transcribe_arguments(parser)
    return parser


def load(args) -> OnnxTransducer:
    try:
        return OnnxTransducer(args.encoder, args.decoder, args.joiner, num_threads=args.num_threads)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    except Exception as e:  # onnxruntime: not an ONNX file, or a broken one
        raise UserError(f"cannot load the ONNX model: {str(e).strip().splitlines()[0]}") from None


def run(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    check_inputs_exist(__file__, {"--encoder": args.encoder, "--decoder": args.decoder,
                                  "--joiner": args.joiner, "--tokens": args.tokens})
    tokens = read_tokens(args.tokens)
    model = load(args)
    check_tokens_fit_model(tokens, model.vocab_size, args.tokens)
    logging.info(f"decoding {len(args.sound_files)} file(s) with {args.method}")

    backend = OnnxBackend(model, args.method, beam=args.beam_size, skip_ids=skip_ids_for(model, tokens))
    return transcribe_and_print(backend, args, tokens.decode)


def main(argv: Optional[List[str]] = None) -> int:
    """The exit code: 0, 1 (some files could not be decoded) or 2 (a user error, one line)."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
