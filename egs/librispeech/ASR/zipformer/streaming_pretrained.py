#!/usr/bin/env python3
"""Transcribe sound files as if they came from a microphone, with a causal Zipformer.

Usage, from egs/<dataset>/ASR:

  ./zipformer/streaming_pretrained.py --checkpoint zipformer/exp/pretrained.pt \\
      --tokens data/lang_bpe_500/tokens.txt --chunk-size 16 --left-context-frames 128 \\
      a.wav b.flac

Each file is read in pieces of one chunk of audio (2 * --chunk-size * 10 ms,
e.g. 320 ms for chunk 16); the fbank frames are computed as the samples
arrive (kaldi-native-fbank, icefall/streaming_features.py) and each chunk is
decoded as soon as its frames (and 13 frames of look-ahead) are there.  Every
time the transcript changes a line ``<file> partial: <text>`` is printed, and
``<file> final: <text>`` at the end (after 0.3 s of padding lets the last
words out).  With greedy_search a partial transcript only grows; with
modified_beam_search the best hypothesis may change.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

RECIPE = Path(__file__).resolve().parent
sys.path.insert(0, str(RECIPE))
sys.path.insert(0, str(RECIPE.parents[3]))  # the repository root, for `icefall`

from icefall.threads import apply_num_threads, set_thread_env  # noqa: E402

set_thread_env()  # before torch is imported

import torch  # noqa: E402

from icefall.audio import AudioFileError, read_audio  # noqa: E402
from icefall.checkpoint import CheckpointError, add_checkpoint_arguments  # noqa: E402
from icefall.streaming_decoder import StreamingDecoder  # noqa: E402
from icefall.streaming_features import SAMPLE_RATE, OnlineFeatures  # noqa: E402
from icefall.streaming_search import add_streaming_search_arguments  # noqa: E402
from icefall.tokens import TokenFileError  # noqa: E402
from model import add_model_arguments, stack_states, unstack_states  # noqa: E402
from streaming_decode import PAD_FRAMES, load_streaming_model  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an exported file with a 'model' state_dict (else --exp-dir "
                        "--epoch/--avg select checkpoints) (default: %(default)s)")
    parser.add_argument("--exp-dir", type=Path, default=Path("zipformer/exp"),
                        help="checkpoints when --checkpoint is not given (default: %(default)s)")
    add_checkpoint_arguments(parser)
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"),
                        help="tokens.txt (default: %(default)s)")
    add_streaming_search_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("sound_files", type=Path, nargs="+",
                        help="audio files (wav, flac, ...), any sample rate")
    return parser


def stream_samples(decoder: StreamingDecoder, samples: np.ndarray, piece: int,
                   on_change: Callable[[List[int]], None],
                   on_chunk: Optional[Callable[[int, List[int]], None]] = None) -> List[int]:
    """Feed `samples` (16 kHz) in pieces of `piece` samples, decoding every chunk
    as soon as it is complete; on_change(tokens) after each change, and
    on_chunk(samples fed so far, tokens) after every decoded chunk if given.
    Returns the final tokens."""
    features = OnlineFeatures()
    stream = decoder.new_stream("mic")
    last: List[int] = []
    fed = 0

    def decode_ready() -> None:
        nonlocal last
        while stream.ready():
            decoder.decode_chunk([stream])
            if on_chunk is not None:
                on_chunk(fed, list(stream.tokens))
            if stream.tokens != last:
                last = list(stream.tokens)
                on_change(last)

    for start in range(0, len(samples), piece):
        features.accept_waveform(samples[start: start + piece])
        fed = min(start + piece, len(samples))
        stream.accept_features(features.pop_frames())
        decode_ready()
    features.input_finished()
    stream.accept_features(features.pop_frames())
    stream.input_finished()
    decode_ready()
    return list(stream.tokens)


def main(argv: Optional[list] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    apply_num_threads()
    try:
        model, tokens, chunk, left = load_streaming_model(args)
    except (CheckpointError, TokenFileError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    decoder = StreamingDecoder(model, stack_states, unstack_states, chunk_frames=2 * chunk,
                               pad_frames=PAD_FRAMES, method=args.decoding_method,
                               num_active_paths=args.num_active_paths)
    piece = 2 * chunk * SAMPLE_RATE // 100  # one chunk of audio
    status = 0
    for path in args.sound_files:
        try:
            samples = read_audio(path, SAMPLE_RATE)
        except AudioFileError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        with torch.no_grad():
            final = stream_samples(
                decoder, samples, piece,
                lambda ids: print(f"{path} partial: {tokens.decode(ids)}", flush=True))
        print(f"{path} final: {tokens.decode(final)}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
