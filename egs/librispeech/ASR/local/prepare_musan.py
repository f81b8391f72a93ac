#!/usr/bin/env python3
"""Stage 2 of egs/librispeech/ASR/prepare.sh (with --musan true): MUSAN manifests.

Writes ``<output-dir>/musan_{recordings,supervisions}_{music,speech,noise}.jsonl.gz``.
"""

import argparse
import logging
import sys
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--corpus-dir", default="download/musan")
    p.add_argument("--output-dir", default="data/manifests")
    args = p.parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    from lhotse.recipes import prepare_musan

    if not Path(args.corpus_dir).is_dir():
        sys.exit(f"prepare_musan.py: {args.corpus_dir} not found; download it (stage 0 with --musan true)")
    prepare_musan(args.corpus_dir, output_dir=args.output_dir)


if __name__ == "__main__":
    main()
