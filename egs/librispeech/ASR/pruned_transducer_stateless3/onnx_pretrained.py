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
numpy, soundfile and kaldi-native-fbank, not torch. A file that cannot be
read gets a one-line error and the exit code 1; the other files are decoded.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

# The repository root, for `icefall` when it is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from icefall.audio import read_audio_files  # noqa: E402
from icefall.onnx_decode import DECODERS, OnnxTransducer, decode_waveforms, skip_ids_for  # noqa: E402
from icefall.tokens import TokenFileError, check_tokens_fit_model, read_tokens  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", type=Path, required=True, help="encoder.onnx (or encoder.int8.onnx)")
    parser.add_argument("--decoder", type=Path, required=True, help="decoder.onnx")
    parser.add_argument("--joiner", type=Path, required=True, help="joiner.onnx")
    parser.add_argument("--tokens", type=Path, required=True, help="tokens.txt of the model")
    parser.add_argument("--method", choices=sorted(DECODERS), default="greedy_search")
    parser.add_argument("--beam-size", type=int, default=4, help="modified_beam_search only")
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("sound_files", type=Path, nargs="+", help="audio files (wav, flac, ...), any sample rate")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    try:
        tokens = read_tokens(args.tokens)
        model = OnnxTransducer(args.encoder, args.decoder, args.joiner, num_threads=args.num_threads)
        check_tokens_fit_model(tokens, model.vocab_size, args.tokens)
    except (TokenFileError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # onnxruntime: not an ONNX file, or a broken one
        print(f"error: cannot load the ONNX model: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    logging.info(f"decoding {len(args.sound_files)} file(s) with {args.method}")

    waves, names, failed = read_audio_files(args.sound_files)
    if waves:
        hyps = decode_waveforms(model, waves, args.method, beam=args.beam_size,
                                skip_ids=skip_ids_for(model, tokens))
        for name, hyp in zip(names, hyps):
            print(f"{name}:\n{tokens.decode(hyp)}\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
