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
the first channel. A file that cannot be read gets a one-line error and the
other files are still decoded; the exit code is then 1.

Our exports carry their config; icefall's own pretrained.pt files carry
none, and are read with the model-size flags (the defaults are icefall's
LibriSpeech model).
"""

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import List, Optional

import torch
from torch.nn.utils.rnn import pad_sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from icefall.audio import read_audio_files  # noqa: E402
from icefall.beam_search import DECODING_METHODS, decode_batch  # noqa: E402
from icefall.checkpoint import CheckpointError  # noqa: E402
from icefall.features import compute_fbank  # noqa: E402
from icefall.tokens import TokenFileError, read_tokens  # noqa: E402
from model import add_model_arguments, load_model  # noqa: E402

LOG_EPS = math.log(1e-10)  # feature padding value, as icefall pads


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="exported pretrained.pt")
    parser.add_argument("--tokens", type=Path, required=True, help="tokens.txt of the model")
    parser.add_argument("--method", choices=DECODING_METHODS, default="greedy_search")
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--max-sym-per-frame", type=int, default=1, help="greedy_search only")
    parser.add_argument("--device", type=str, default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("sound_files", type=Path, nargs="+", help="audio files (wav, flac, ...), any sample rate")
    add_model_arguments(parser)
    return parser


def transcribe(model, tokens, waves: List, method: str, beam: int, max_sym: int, device) -> List[str]:
    """Decode a batch of 16 kHz waveforms; returns one transcript each."""
    features = [f.to(device) for f in compute_fbank(waves, device=device)]
    lens = torch.tensor([f.size(0) for f in features], device=device)
    x = pad_sequence(features, batch_first=True, padding_value=LOG_EPS)
    with torch.no_grad():
        encoder_out, encoder_out_lens = model.encoder(x, lens)
        hyps = decode_batch(model, encoder_out, encoder_out_lens, method, beam=beam, max_sym_per_frame=max_sym)
    return [tokens.decode(h) for h in hyps]


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        tokens = read_tokens(args.tokens)
        model = load_model(args, tokens, args.tokens).to(device)
    except (CheckpointError, TokenFileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # load_state_dict: names or shapes differ
        print(f"error: {args.checkpoint}: does not fit the model: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    logging.info(f"decoding {len(args.sound_files)} file(s) with {args.method} on {device}")

    waves, names, failed = read_audio_files(args.sound_files)
    if waves:
        texts = transcribe(model, tokens, waves, args.method, args.beam_size, args.max_sym_per_frame, device)
        for name, text in zip(names, texts):
            print(f"{name}:\n{text}\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
