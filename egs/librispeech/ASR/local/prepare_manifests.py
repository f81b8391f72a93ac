#!/usr/bin/env python3
"""Stage 1 of egs/librispeech/ASR/prepare.sh: lhotse manifests of LibriSpeech.

Checks that every ``.flac`` of the parts is readable audio first (a clear
error names a corrupt or empty file), then runs lhotse's
``prepare_librispeech``, which writes
``<output-dir>/librispeech_{recordings,supervisions}_<part>.jsonl.gz``.
"""

import argparse
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional

from tqdm import tqdm

LIBRISPEECH_PARTS = (
    "dev-clean", "dev-other", "test-clean", "test-other",
    "train-clean-100", "train-clean-360", "train-other-500",
)


def check_audio(path: Path) -> Optional[str]:
    """None if ``path`` looks like good audio, else the reason."""
    import soundfile as sf

    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    try:
        info = sf.info(str(path))
    except Exception as e:
        return f"not readable audio ({str(e).splitlines()[0]})"
    if info.frames <= 0:
        return "0 samples"
    return None


def check_parts(corpus_dir: Path, parts: List[str], num_jobs: int) -> None:
    files = sorted(f for part in parts for f in (corpus_dir / part).rglob("*.flac"))
    with ThreadPoolExecutor(num_jobs) as ex:
        for path, problem in tqdm(zip(files, ex.map(check_audio, files)), total=len(files),
                                  desc="checking audio"):
            if problem:
                sys.exit(f"prepare_manifests.py: {path}: corrupt audio: {problem}; "
                         "re-download this part or delete the file and its line in the .trans.txt")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--corpus-dir", default="download/LibriSpeech")
    p.add_argument("--output-dir", default="data/manifests")
    p.add_argument("--parts", default="auto", help="comma-separated parts, or 'auto': all found")
    p.add_argument("--num-jobs", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    from lhotse.recipes import prepare_librispeech

    corpus = Path(args.corpus_dir)
    if not corpus.is_dir():
        sys.exit(f"prepare_manifests.py: {corpus} not found; download LibriSpeech (stage 0) or "
                 "pass --dl-dir pointing at the folder holding LibriSpeech/")
    if args.parts == "auto":
        parts = [p for p in LIBRISPEECH_PARTS if (corpus / p).is_dir()]
    else:
        parts = args.parts.split(",")
        missing = [p for p in parts if not (corpus / p).is_dir()]
        if missing:
            sys.exit(f"prepare_manifests.py: --parts: {', '.join(str(corpus / p) for p in missing)} not found")
    if not parts:
        sys.exit(f"prepare_manifests.py: no LibriSpeech part ({', '.join(LIBRISPEECH_PARTS)}) in {corpus}")
    check_parts(corpus, parts, args.num_jobs)
    prepare_librispeech(corpus, dataset_parts=parts, output_dir=args.output_dir, num_jobs=args.num_jobs)
    logging.info(f"manifests of {', '.join(parts)} in {args.output_dir}")


if __name__ == "__main__":
    main()
