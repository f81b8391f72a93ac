#!/usr/bin/env python3
"""The fbank stage of prepare.sh: 80-dim lhotse Fbank features of each part.

For every ``<manifest-dir>/<prefix>_{recordings,supervisions}_<part>.jsonl.gz``
writes ``<output-dir>/<prefix>_cuts_<part>.jsonl.gz`` with features stored by
``LilcomChunkyWriter`` in ``<output-dir>/<prefix>_feats_<part>``. Train parts
(names starting with "train") get speed perturbation 0.9 and 1.1 with
``--perturb-speed true``, as icefall's compute_fbank_librispeech.py. A part
whose cuts file exists is skipped. ``--musan true`` also computes MUSAN
features (``musan_cuts.jsonl.gz``, 5-second windows as icefall).
"""

import argparse
import logging
import sys
from pathlib import Path

from icefall.features import compute_and_store_fbank


def str2bool(v: str) -> bool:
    if v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest-dir", default="data/manifests")
    p.add_argument("--output-dir", default="data/fbank")
    p.add_argument("--prefix", default="librispeech", help="corpus name in the file names")
    p.add_argument("--parts", default="auto",
                   help="comma-separated parts, or 'auto': every part with manifests")
    p.add_argument("--perturb-speed", type=str2bool, default=True,
                   help="add 0.9x and 1.1x speed copies of train parts")
    p.add_argument("--musan", type=str2bool, default=False, help="also compute MUSAN features")
    p.add_argument("--num-jobs", type=int, default=2)
    return p


def find_parts(manifest_dir: Path, prefix: str):
    head = f"{prefix}_recordings_"
    return sorted(p.name[len(head):-len(".jsonl.gz")] for p in manifest_dir.glob(f"{head}*.jsonl.gz"))


def save_cuts(cuts, path: Path) -> None:
    tmp = path.with_name("tmp." + path.name)
    cuts.to_file(tmp)
    tmp.replace(path)


def compute_part(args, part: str) -> None:
    from lhotse import CutSet, load_manifest

    out = Path(args.output_dir)
    cuts_path = out / f"{args.prefix}_cuts_{part}.jsonl.gz"
    if cuts_path.is_file():
        logging.info(f"{cuts_path} exists, skipping {part}")
        return
    mdir = Path(args.manifest_dir)
    paths = [mdir / f"{args.prefix}_{kind}_{part}.jsonl.gz" for kind in ("recordings", "supervisions")]
    for path in paths:
        if not path.is_file():
            sys.exit(f"compute_fbank.py: {path} not found; run the manifest stage (--parts {args.parts})")
    cuts = CutSet.from_manifests(recordings=load_manifest(paths[0]), supervisions=load_manifest(paths[1]))
    perturb = args.perturb_speed and part.startswith("train")
    logging.info(f"{part}: {len(cuts)} cuts{' x3 (speed 0.9, 1.0, 1.1)' if perturb else ''}")
    cuts = compute_and_store_fbank(cuts, out / f"{args.prefix}_feats_{part}",
                                   num_jobs=args.num_jobs, perturb_speed=perturb)
    save_cuts(cuts, cuts_path)
    logging.info(f"wrote {cuts_path}")


def compute_musan(args) -> None:
    from lhotse import CutSet, combine, load_manifest

    out = Path(args.output_dir)
    cuts_path = out / "musan_cuts.jsonl.gz"
    if cuts_path.is_file():
        logging.info(f"{cuts_path} exists, skipping MUSAN")
        return
    parts = [Path(args.manifest_dir) / f"musan_recordings_{p}.jsonl.gz" for p in ("music", "speech", "noise")]
    for path in parts:
        if not path.is_file():
            sys.exit(f"compute_fbank.py: {path} not found; run the MUSAN manifest stage (--musan true)")
    recordings = combine(load_manifest(p) for p in parts)
    cuts = (
        CutSet.from_manifests(recordings=recordings)
        .cut_into_windows(10.0)
        .filter(lambda c: c.duration > 5)
    )
    cuts = compute_and_store_fbank(cuts, out / "musan_feats", num_jobs=args.num_jobs)
    save_cuts(cuts, cuts_path)


def main() -> None:
    args = get_parser().parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    parts = find_parts(Path(args.manifest_dir), args.prefix) if args.parts == "auto" else args.parts.split(",")
    if not parts:
        sys.exit(f"compute_fbank.py: no {args.prefix}_recordings_*.jsonl.gz in {args.manifest_dir}; "
                 "run the manifest stage")
    for part in parts:
        compute_part(args, part)
    if args.musan:
        compute_musan(args)


if __name__ == "__main__":
    main()
