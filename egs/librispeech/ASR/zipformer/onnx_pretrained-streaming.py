#!/usr/bin/env python3
"""Transcribe sound files as from a microphone with the files of
export-onnx-streaming.py, without torch (onnxruntime, numpy, soundfile,
kaldi-native-fbank).

Usage, from egs/<dataset>/ASR:

  ./zipformer/onnx_pretrained-streaming.py \\
      --encoder zipformer/exp/encoder-chunk-16-left-128.onnx \\
      --decoder zipformer/exp/decoder-chunk-16-left-128.onnx \\
      --joiner zipformer/exp/joiner-chunk-16-left-128.onnx \\
      --tokens zipformer/exp/tokens.txt a.wav b.flac

(the *.int8.onnx files work the same way).  As streaming_pretrained.py: each
file is fed one chunk of audio at a time (decode_chunk_len * 10 ms),
``<file> partial: <text>`` is printed whenever the transcript changes and
``<file> final: <text>`` at the end; greedy search.
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

# The repository root, for `icefall` when it is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from icefall.threads import set_thread_env  # noqa: E402

set_thread_env()  # OpenMP waiting policy (no torch here: onnxruntime has --num-threads)

from icefall.audio import AudioFileError, read_audio  # noqa: E402
from icefall.onnx_decode import skip_ids_for  # noqa: E402
from icefall.streaming_onnx import OnnxStreamingTransducer, stream_waveform  # noqa: E402
from icefall.tokens import TokenFileError, check_tokens_fit_model, read_tokens  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", type=Path, required=True,
                        help="encoder-chunk-*-left-*.onnx (or its .int8.onnx)")
    parser.add_argument("--decoder", type=Path, required=True, help="decoder-*.onnx")
    parser.add_argument("--joiner", type=Path, required=True, help="joiner-*.onnx")
    parser.add_argument("--tokens", type=Path, required=True, help="tokens.txt of the model")
    parser.add_argument("--num-threads", type=int, default=1,
                        help="onnxruntime threads (default: %(default)s)")
    parser.add_argument("sound_files", type=Path, nargs="+",
                        help="audio files (wav, flac, ...), any sample rate")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        tokens = read_tokens(args.tokens)
        model = OnnxStreamingTransducer(args.encoder, args.decoder, args.joiner,
                                        num_threads=args.num_threads)
        check_tokens_fit_model(tokens, model.vocab_size, args.tokens)
    except (TokenFileError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # onnxruntime: not an ONNX file, or a broken one
        print(f"error: cannot load the ONNX model: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    piece = model.chunk_frames * 160  # one chunk of audio at 16 kHz
    status = 0
    for path in args.sound_files:
        try:
            samples = read_audio(path, 16000)
        except AudioFileError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        final = stream_waveform(
            model, samples, piece, skip_ids=skip_ids_for(model, tokens),
            on_change=lambda ids: print(f"{path} partial: {tokens.decode(ids)}", flush=True))
        print(f"{path} final: {tokens.decode(final)}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
