#!/usr/bin/env python3
"""Stage 1 of egs/synth/ASR/prepare.sh: lhotse manifests of the synthesised audio.

Writes ``<manifest-dir>/synth_{recordings,supervisions}_{train,dev,test}.jsonl.gz``
(and ``_heldout`` when the audio dir has that split)
after checking them with lhotse's ``validate_recordings_and_supervisions``.
"""

import argparse
import logging
import sys
from pathlib import Path

from lhotse.qa import validate_recordings_and_supervisions

from icefall.synth_corpus import SPLITS, make_manifests


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--audio-dir", default="data/audio/synth", help="output of the synthesis stage")
    p.add_argument("--manifest-dir", default="data/manifests", help="where to write the manifests")
    args = p.parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    out = Path(args.manifest_dir)
    out.mkdir(parents=True, exist_ok=True)
    heldout = ("heldout",) if (Path(args.audio_dir) / "heldout.jsonl").is_file() else ()
    for split in SPLITS + heldout:
        try:
            recordings, supervisions = make_manifests(args.audio_dir, split)
        except FileNotFoundError as e:
            sys.exit(f"prepare_manifests.py: {e}")
        validate_recordings_and_supervisions(recordings, supervisions)
        for name, manifest in (("recordings", recordings), ("supervisions", supervisions)):
            path = out / f"synth_{name}_{split}.jsonl.gz"
            tmp = path.with_name("tmp." + path.name)  # keeps the .jsonl.gz suffix lhotse needs
            manifest.to_file(tmp)
            tmp.replace(path)
        hours = sum(r.duration for r in recordings) / 3600
        logging.info(f"{split}: {len(recordings)} recordings, {hours:.2f} h -> {out}/synth_*_{split}.jsonl.gz")


if __name__ == "__main__":
    main()
