#!/usr/bin/env python3
"""The lang stage of prepare.sh: ``words.txt`` and ``lexicon.txt`` in BPE pieces.

Reads ``<lang-dir>/bpe.model`` and ``<lang-dir>/transcript_words.txt`` (the BPE
stage); ``words.txt`` is icefall's (``<eps>`` 0, ``!SIL``, ``<SPOKEN_NOISE>``,
``<UNK>``, words, ``#0``, ``<s>``, ``</s>``); ``lexicon.txt`` spells each word
with BPE pieces, and ``<UNK>`` as ``▁ <unk>``.
"""

import argparse
import logging
import sys
from pathlib import Path

from icefall.text import words_table
from icefall.tokens import UNK, bpe_lexicon, load_bpe_model, write_lexicon


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lang-dir", required=True, help="e.g. data/lang_bpe_500")
    args = p.parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    lang = Path(args.lang_dir)
    transcripts = lang / "transcript_words.txt"
    if not transcripts.is_file():
        sys.exit(f"prepare_lang.py: {transcripts} not found; run the BPE stage first")
    words = sorted({w for line in transcripts.read_text(encoding="utf-8").splitlines() for w in line.split()})
    sp = load_bpe_model(lang / "bpe.model")
    words_table(words).to_file(lang / "words.txt")
    lexicon = bpe_lexicon(sp, words) + [("<UNK>", ["\u2581", UNK])]
    write_lexicon(lexicon, lang / "lexicon.txt")
    logging.info(f"wrote {lang}/words.txt and {lang}/lexicon.txt ({len(words)} words)")


if __name__ == "__main__":
    main()
