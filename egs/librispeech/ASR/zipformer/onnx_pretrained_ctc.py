#!/usr/bin/env python3
"""Transcribe sound files with the CTC model of export-onnx.py (ctc.onnx or
ctc.int8.onnx), without torch: CTC greedy search (argmax per frame, repeats
collapsed, blanks dropped).

Usage:

  ./zipformer/onnx_pretrained_ctc.py --model zipformer/exp/ctc.onnx \\
      --tokens zipformer/exp/tokens.txt a.wav b.flac

Prints for each file ``filename:`` and the transcript on the next line, then
an empty line. Features come from kaldi-native-fbank with the settings of our
training features (see icefall/onnx_decode.py). A file that cannot be read
gets a one-line error and the exit code 1; the other files are decoded.
(The transducer files are decoded by ./zipformer/onnx_pretrained.py.)
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

# The repository root, for `icefall` when it is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from icefall.threads import set_thread_env  # noqa: E402

set_thread_env()  # OpenMP waiting policy (no torch here: onnxruntime has --num-threads)

from icefall.audio import read_audio_files  # noqa: E402
from icefall.onnx_decode import compute_fbank_knf, pad_features  # noqa: E402
from icefall.tokens import TokenFileError, check_tokens_fit_model, read_tokens  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="ctc.onnx (or ctc.int8.onnx)")
    parser.add_argument("--tokens", type=Path, required=True, help="tokens.txt of the model")
    parser.add_argument("--blank-id", type=int, default=0, help="the blank token (default: 0)")
    parser.add_argument("--num-threads", type=int, default=1,
                        help="onnxruntime threads (default: %(default)s)")
    parser.add_argument("sound_files", type=Path, nargs="+",
                        help="audio files (wav, flac, ...), any sample rate")
    return parser


def ctc_greedy(log_probs: np.ndarray, lens: np.ndarray, blank_id: int = 0) -> List[List[int]]:
    """log_probs [N, T, V], lens [N] -> N lists of ids (argmax, collapse, drop blank)."""
    hyps = []
    for best, n in zip(log_probs.argmax(axis=-1), lens.tolist()):
        best = best[:n]
        keep = np.ones(len(best), dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        hyps.append([int(t) for t in best[keep] if t != blank_id])
    return hyps


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    try:
        import onnxruntime as ort

        tokens = read_tokens(args.tokens)
        if not args.model.is_file():
            raise FileNotFoundError(f"{args.model}: ONNX model not found (run export-onnx.py)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.num_threads
        session = ort.InferenceSession(str(args.model), sess_options=opts,
                                       providers=["CPUExecutionProvider"])
        check_tokens_fit_model(tokens, session.get_outputs()[0].shape[-1], args.tokens)
    except (TokenFileError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # onnxruntime: not an ONNX file, or a broken one
        print(f"error: cannot load the ONNX model: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2

    waves, names, failed = read_audio_files(args.sound_files)
    if waves:
        x, x_lens = pad_features(compute_fbank_knf(waves))
        log_probs, lens = session.run(None, {"x": x, "x_lens": x_lens})
        for name, hyp in zip(names, ctc_greedy(log_probs, lens, args.blank_id)):
            print(f"{name}:\n{tokens.decode(hyp)}\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
