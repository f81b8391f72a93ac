#!/usr/bin/env python3
"""Which words a model misses, by how often it heard them in training.

For every reference word of one or more ``recogs-*.txt`` files (decode.py's
transcripts), counts how often the word occurs in the training transcripts
and whether the alignment with the hypothesis got it right, then prints, per
bin of training counts, the share of the reference words in the bin and the
share of them missed (substituted or deleted).

  ./local/errors_by_frequency.py \\
    --train-text data/lang_bpe_256/transcript_words.txt \\
    pruned_transducer_stateless3/exp/greedy_search/recogs-heldout-*.txt
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

from icefall.wer import errors_by_word_count, load_transcripts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recogs", nargs="+", type=Path, help="recogs-*.txt files written by decode.py")
    p.add_argument("--train-text", type=Path, required=True,
                   help="the training transcripts, one utterance a line "
                        "(prepare.sh writes data/lang_bpe_N/transcript_words.txt)")
    p.add_argument("--edges", default="1,5,20,100",
                   help="bin edges of the training counts (default: %(default)s: bins 0, 1-4, "
                        "5-19, 20-99, 100+)")
    args = p.parse_args()
    try:
        edges = [int(e) for e in args.edges.split(",")]
        if not edges or edges[0] < 1 or edges != sorted(set(edges)):
            raise ValueError
    except ValueError:
        sys.exit(f"errors_by_frequency.py: --edges must be increasing whole numbers >= 1, got '{args.edges}'")
    try:
        text = args.train_text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        sys.exit(f"errors_by_frequency.py: --train-text {args.train_text}: {e}")
    counts = Counter(text.split())
    for path in args.recogs:
        try:
            results = load_transcripts(path)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            sys.exit(f"errors_by_frequency.py: {e}")
        rows = errors_by_word_count(results, counts, edges)
        words = sum(n for _, n, _ in rows)
        missed = sum(m for _, _, m in rows)
        print(f"{path} ({len(results)} utterances, {words} reference words, "
              f"{100 * missed / max(words, 1):.1f}% missed)")
        print("| seen in training | reference words | share | missed |")
        print("|---|---|---|---|")
        for label, n, m in rows:
            share = 100 * n / max(words, 1)
            print(f"| {label} times | {n} | {share:.1f}% | {100 * m / n:.1f}% |" if n else
                  f"| {label} times | 0 | 0.0% | |")


if __name__ == "__main__":
    main()
