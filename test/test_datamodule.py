"""Tests of icefall/asr_datamodule.py on a small synthetic cut set."""

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from icefall.asr_datamodule import AsrDataModule

TEXTS = [
    "THE OLD TOWN WAS BUILT NEAR THE RIVER", "PEOPLE CAME FROM THE NORTH", "THE RIVER WAS WIDE",
    "A NEW ROAD WAS BUILT", "THE CITY HAS MANY OLD BUILDINGS", "MOST PEOPLE WORK IN THE CITY",
    "THE NORTH IS COLD", "FARMERS GROW WHEAT IN THE VALLEY", "SHIPS CARRY GOODS",
    "THE MUSEUM SHOWS ART FROM MANY COUNTRIES", "WINTERS ARE LONG", "SUMMERS ARE SHORT AND WARM",
]


@pytest.fixture(scope="module")
def fbank_dir(tmp_path_factory):
    """synth_cuts_{train,dev,test}.jsonl.gz with precomputed features (absolute paths)."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    from icefall.features import compute_and_store_fbank
    from icefall.synth_corpus import Utterance, render

    root = tmp_path_factory.mktemp("dm")
    out = root / "fbank"
    out.mkdir()
    voices = ["en-us+m1", "en+f2", "en-029+m4"]
    for split, n in (("train", 24), ("dev", 4), ("test", 4)):
        recs, sups = [], []
        for i in range(n):
            uid = f"{split}-{i:03d}"
            utt = Utterance(id=uid, split=split, text=TEXTS[i % len(TEXTS)], voice=voices[i % 3],
                            rate=150 + 5 * (i % 8), pitch=50, pitch_range=50, snr=30.0, gain=0.5,
                            lead=0.1, noise_seed=i)
            path = root / f"{uid}.flac"
            sf.write(path, render(utt), 16000, subtype="PCM_16")
            rec = Recording.from_file(path, recording_id=uid)
            recs.append(rec)
            sups.append(SupervisionSegment(id=uid, recording_id=uid, start=0, duration=rec.duration,
                                           text=utt.text, speaker=utt.voice))
        cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs),
                                     supervisions=SupervisionSet.from_segments(sups))
        cuts = compute_and_store_fbank(cuts, out / f"synth_feats_{split}", progress_bar=False)
        cuts.to_file(out / f"synth_cuts_{split}.jsonl.gz")
    return out


def test_fbank_with_two_jobs_stores_the_same_features(fbank_dir, tmp_path):
    """The worker pool (one archive per job) against one process."""
    from lhotse import CutSet

    from icefall.features import compute_and_store_fbank

    cuts = CutSet.from_file(fbank_dir / "synth_cuts_dev.jsonl.gz").drop_features()
    one = compute_and_store_fbank(cuts, tmp_path / "one", num_jobs=1, progress_bar=False)
    two = compute_and_store_fbank(cuts, tmp_path / "two", num_jobs=2, progress_bar=False, min_cuts_per_job=2)
    assert (tmp_path / "two").is_dir() and len(list((tmp_path / "two").iterdir())) == 2  # one per job
    by_id = {c.id: c for c in two}
    assert sorted(by_id) == sorted(c.id for c in one)
    for c in one:
        assert np.array_equal(c.load_features(), by_id[c.id].load_features()), c.id


def sid(cut) -> str:
    return cut.supervisions[0].id


def make_args(manifest_dir: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    AsrDataModule.add_arguments(parser)
    return parser.parse_args(["--manifest-dir", str(manifest_dir), "--num-workers", "0",
                              "--max-duration", "8", "--num-buckets", "2", *extra])


def test_flags_and_defaults(fbank_dir):
    args = make_args(fbank_dir)
    assert args.enable_spec_aug is True and args.spec_aug_time_warp_factor == 80
    assert args.bucketing_sampler is True and args.on_the_fly_feats is False
    assert args.dataset == "auto" and args.full_libri is False
    dm = AsrDataModule(args)
    assert dm.dataset == "synth"
    assert set(dm.test_sets()) == {"test"}
    assert len(dm.valid_cuts().to_eager()) == 4


def test_heldout_decoded_when_present(tmp_path, fbank_dir):
    for name in ("synth_cuts_test.jsonl.gz", "synth_cuts_dev.jsonl.gz"):
        shutil.copy(fbank_dir / name, tmp_path / name)
    assert set(AsrDataModule(make_args(tmp_path)).test_sets()) == {"test"}
    shutil.copy(fbank_dir / "synth_cuts_test.jsonl.gz", tmp_path / "synth_cuts_heldout.jsonl.gz")
    assert set(AsrDataModule(make_args(tmp_path)).test_sets()) == {"test", "heldout"}


def test_auto_dataset_errors(tmp_path, fbank_dir):
    with pytest.raises(FileNotFoundError, match="--manifest-dir"):
        AsrDataModule(make_args(tmp_path))
    shutil.copy(fbank_dir / "synth_cuts_test.jsonl.gz", tmp_path / "librispeech_cuts_test-clean.jsonl.gz")
    shutil.copy(fbank_dir / "synth_cuts_test.jsonl.gz", tmp_path / "synth_cuts_test.jsonl.gz")
    with pytest.raises(ValueError, match="--dataset"):
        AsrDataModule(make_args(tmp_path))
    dm = AsrDataModule(make_args(tmp_path, "--dataset", "librispeech"))
    with pytest.raises(FileNotFoundError, match="librispeech_cuts_test-other.jsonl.gz"):
        dm.test_sets()


def test_librispeech_layout(tmp_path, fbank_dir):
    for part in ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other"):
        shutil.copy(fbank_dir / "synth_cuts_test.jsonl.gz", tmp_path / f"librispeech_cuts_{part}.jsonl.gz")
    dm = AsrDataModule(make_args(tmp_path))
    assert dm.dataset == "librispeech"
    assert set(dm.test_sets()) == {"test-clean", "test-other"}
    assert len(dm.valid_cuts().to_eager()) == 8  # dev-clean + dev-other
    dm.args.full_libri = True
    with pytest.raises(FileNotFoundError, match="train-clean-360"):
        dm.train_cuts()


def test_train_batches_with_spec_augment(fbank_dir):
    dm = AsrDataModule(make_args(fbank_dir, "--shuffle", "false"))
    plain = AsrDataModule(make_args(fbank_dir, "--shuffle", "false", "--enable-spec-aug", "false"))
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloaders(dm.train_cuts())))
    ref = next(iter(plain.train_dataloaders(plain.train_cuts())))
    x, sup = batch["inputs"], batch["supervisions"]
    assert x.dim() == 3 and x.shape[2] == 80 and x.shape[0] == len(sup["text"])
    assert sup["num_frames"].max() <= x.shape[1]
    assert [sid(c) for c in sup["cut"]] == [sid(c) for c in ref["supervisions"]["cut"]]
    assert not torch.equal(x, ref["inputs"])  # SpecAugment changed the features


def test_valid_and_test_loaders_cover_all_cuts(fbank_dir):
    dm = AsrDataModule(make_args(fbank_dir))
    ids = [sid(c) for b in dm.test_dataloaders(dm.test_sets()["test"]) for c in b["supervisions"]["cut"]]
    assert sorted(ids) == [f"test-{i:03d}" for i in range(4)]
    n = sum(len(b["supervisions"]["text"]) for b in dm.valid_dataloaders(dm.valid_cuts()))
    assert n == 4


def test_on_the_fly_features_match_precomputed(fbank_dir):
    pre = AsrDataModule(make_args(fbank_dir))
    otf = AsrDataModule(make_args(fbank_dir, "--on-the-fly-feats", "true"))
    a = next(iter(pre.test_dataloaders(pre.test_sets()["test"])))
    b = next(iter(otf.test_dataloaders(otf.test_sets()["test"])))
    assert a["inputs"].shape == b["inputs"].shape
    assert (a["inputs"] - b["inputs"]).abs().max() < 0.05  # lilcom compression is lossy


def test_sampler_state_restores_the_epoch(fbank_dir):
    dm = AsrDataModule(make_args(fbank_dir, "--max-duration", "6"))
    cuts = dm.train_cuts()
    ids = lambda b: [sid(c) for c in b["supervisions"]["cut"]]
    full = [ids(b) for b in dm.train_dataloaders(cuts)]
    assert len(full) >= 4
    dl = dm.train_dataloaders(cuts)
    it = iter(dl)
    first = [ids(next(it)) for _ in range(2)]
    state = dl.sampler.state_dict()
    resumed = [ids(b) for b in dm.train_dataloaders(cuts, sampler_state_dict=state)]
    assert first == full[:2]
    assert resumed == full[2:]


def test_small_corpus_with_many_buckets_still_gives_batches(fbank_dir):
    # 24 cuts (~50 s) in 30 buckets of --max-duration 20: every bucket would
    # drop its only, partial batch (drop_last) without fit_num_buckets.
    dm = AsrDataModule(make_args(fbank_dir, "--num-buckets", "30", "--max-duration", "20"))
    batches = list(dm.train_dataloaders(dm.train_cuts()))
    assert batches
    assert all(sum(c.duration for c in b["supervisions"]["cut"]) <= 20 for b in batches)


def test_fit_num_buckets_reads_only_what_it_needs():
    from types import SimpleNamespace

    from icefall.asr_datamodule import fit_num_buckets

    seen = []

    def cuts(n):
        for i in range(n):
            seen.append(i)
            yield SimpleNamespace(duration=2.0)

    # 1000 cuts x 2 s = 2000 s; 1.5 batches of 100 s per bucket -> 13 buckets
    assert fit_num_buckets(cuts(1000), 30, 100.0, drop_last=True) == 13
    seen.clear()
    # a large corpus keeps its 30 buckets, after reading 30 * 150 s = 2250 cuts
    assert fit_num_buckets(cuts(10**6), 30, 100.0, drop_last=True) == 30
    assert len(seen) == 2250
    assert fit_num_buckets(cuts(3), 30, 100.0, drop_last=True) == 1
    # without drop_last only lhotse's limit applies: no more buckets than cuts
    assert fit_num_buckets(cuts(3), 30, 100.0, drop_last=False) == 3
    assert fit_num_buckets(cuts(1000), 30, 100.0, drop_last=False) == 30
