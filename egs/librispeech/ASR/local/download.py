#!/usr/bin/env python3
"""Stage 0 of egs/librispeech/ASR/prepare.sh: download LibriSpeech (and MUSAN).

Uses lhotse's ``download_librispeech`` / ``download_musan``, which skip parts
already downloaded and extracted. Needs internet access (openslr.org).
"""

import argparse
import logging
import sys

from lhotse.recipes import download_librispeech, download_musan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dl-dir", default="download")
    p.add_argument("--dataset-parts", default="librispeech",
                   help="'librispeech' (all 7 parts), 'mini_librispeech', or comma-separated parts")
    p.add_argument("--musan", default="false", choices=["true", "false"])
    args = p.parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    parts = args.dataset_parts
    if parts not in ("librispeech", "mini_librispeech"):
        parts = parts.split(",")
    try:
        download_librispeech(args.dl_dir, dataset_parts=parts)
        if args.musan == "true":
            download_musan(args.dl_dir)
    except Exception as e:  # network errors come in many types
        sys.exit(f"download.py: downloading into --dl-dir {args.dl_dir} failed: {e}")


if __name__ == "__main__":
    main()
