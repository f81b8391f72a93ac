#!/usr/bin/env python3
"""The BPE stage of prepare.sh: a sentencepiece unigram model of the training transcripts.

Writes to ``<lang-dir>``: ``transcript_words.txt`` (one transcript a line),
``unigram_<N>.model`` copied to ``bpe.model``, and ``tokens.txt``
(``<blk>`` 0, ``<sos/eos>`` 1, ``<unk>`` 2).
"""

import argparse
import logging
import shutil
import sys
from pathlib import Path

from icefall.text import read_supervision_texts
from icefall.tokens import bpe_symbol_table, load_bpe_model, train_bpe_model, write_tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lang-dir", required=True, help="e.g. data/lang_bpe_500")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("supervisions", nargs="+", help="supervision manifests of the training parts")
    args = p.parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    lang = Path(args.lang_dir)
    lang.mkdir(parents=True, exist_ok=True)
    try:
        texts = read_supervision_texts(args.supervisions)
    except FileNotFoundError as e:
        sys.exit(f"prepare_bpe.py: {e}")
    if not texts:
        sys.exit(f"prepare_bpe.py: no transcripts in {' '.join(args.supervisions)}")
    (lang / "transcript_words.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    logging.info(f"{len(texts)} transcripts -> {lang}/transcript_words.txt")
    try:
        model = train_bpe_model(lang / "transcript_words.txt", lang / f"unigram_{args.vocab_size}",
                                args.vocab_size)
    except RuntimeError as e:  # sentencepiece: e.g. vocab size too large for the text
        sys.exit(f"prepare_bpe.py: --vocab-size {args.vocab_size}: sentencepiece failed: {e}")
    shutil.copyfile(model, lang / "bpe.model")
    write_tokens(bpe_symbol_table(load_bpe_model(lang / "bpe.model")), lang / "tokens.txt")
    logging.info(f"wrote {lang}/bpe.model and {lang}/tokens.txt ({args.vocab_size} tokens)")


if __name__ == "__main__":
    main()
