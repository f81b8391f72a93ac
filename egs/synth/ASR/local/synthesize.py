#!/usr/bin/env python3
"""Stage 0 of egs/synth/ASR/prepare.sh: synthesise the corpus audio.

Writes ``<output-dir>/{train,dev,test,heldout}/*.flac``, ``{split}.jsonl``
and ``vocab.txt``; see ``icefall/synth_corpus.py``. The ``heldout`` split
speaks the sentences of ``--heldout`` (default: ``local/heldout/sentences.txt``,
written for this recipe, see its README) with the test voices.
"""

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Tuple

from icefall.synth_corpus import SynthConfig, VoiceError, synthesize_corpus
from icefall.text import TextSourceError


HELDOUT = Path(__file__).resolve().parent / "heldout" / "sentences.txt"


def _seconds_range(value: str) -> Tuple[float, float]:
    try:
        lo, hi = (float(x) for x in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX seconds, got {value!r}")
    return lo, hi


def _tail(value: str) -> Optional[Tuple[float, float]]:
    if value.strip().lower() == "none":
        return None
    try:
        return _seconds_range(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX seconds or none, got {value!r}")


def get_parser() -> argparse.ArgumentParser:
    d = SynthConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output-dir", default="data/audio/synth", help="where to write the audio and plans")
    p.add_argument("--num-train", type=int, default=d.num_train, help="training utterances")
    p.add_argument("--num-dev", type=int, default=d.num_dev, help="dev utterances (unseen voices and sentences)")
    p.add_argument("--num-test", type=int, default=d.num_test, help="test utterances (unseen voices and sentences)")
    p.add_argument("--num-words", type=int, default=d.num_words,
                   help="sentences use only the N most frequent words of the text (0: all)")
    p.add_argument("--min-words", type=int, default=d.min_words, help="fewest words of an utterance")
    p.add_argument("--max-words", type=int, default=d.max_words, help="most words of an utterance")
    p.add_argument("--seed", type=int, default=d.seed, help="same seed and flags, same corpus")
    p.add_argument("--text-source", default="wordnet",
                   help="wordnet (WordNet 3.0 examples, then glosses), wordnet-examples, markov "
                   "(essential-generators' Wikipedia chain), a Markov chain .json or a UTF-8 text file")
    p.add_argument("--heldout", default=str(HELDOUT),
                   help="held-out sentences (one a line) for the heldout split; never used as "
                   "corpus sentences; '' for none")
    p.add_argument("--languages", default=",".join(d.languages), help="espeak English voices")
    for split in ("train", "dev", "test"):
        p.add_argument(f"--{split}-variants", default=",".join(d.variants(split)),
                       help=f"espeak voice variants of the {split} split")
    p.add_argument("--tail", type=_tail, default=",".join(map(str, d.tail)),
                   help="MIN,MAX: seconds of silence kept after the speech, drawn uniformly "
                   "(espeak-ng adds about 0.3 s); 'none' keeps all of it")
    p.add_argument("--lead", type=_seconds_range, default=",".join(map(str, d.lead)),
                   help="MIN,MAX: seconds of silence put before the speech, drawn uniformly")
    p.add_argument("--nj", type=int, default=2, help="synthesis processes")
    return p


def main() -> None:
    args = get_parser().parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    split_list = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())
    config = SynthConfig(
        num_train=args.num_train, num_dev=args.num_dev, num_test=args.num_test,
        num_words=args.num_words, min_words=args.min_words, max_words=args.max_words,
        seed=args.seed, text_source=args.text_source, heldout=args.heldout or None,
        languages=split_list(args.languages),
        train_variants=split_list(args.train_variants), dev_variants=split_list(args.dev_variants),
        test_variants=split_list(args.test_variants), tail=args.tail, lead=args.lead,
    )
    start = time.time()
    try:
        plan = synthesize_corpus(config, args.output_dir, num_jobs=args.nj)
    except TextSourceError as e:
        sys.exit(f"synthesize.py: --text-source: {e}")
    except (VoiceError, ValueError) as e:
        sys.exit(f"synthesize.py: {e}")
    hours = sum(u.num_samples for utts in plan.values() for u in utts) / 16000 / 3600
    logging.info(f"synthesised {hours:.2f} h in {time.time() - start:.0f} s into {args.output_dir}")


if __name__ == "__main__":
    main()
