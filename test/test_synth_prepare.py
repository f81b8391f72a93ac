"""egs/synth/ASR/prepare.sh end to end on a tiny corpus, run in a temporary directory."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
PREPARE = REPO / "egs" / "synth" / "ASR" / "prepare.sh"
TINY = ["--num-train", "40", "--num-dev", "6", "--num-test", "6", "--vocab-size", "60", "--nj", "2"]


def run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["PYTHON"] = sys.executable
    env["PYTHONPATH"] = f"{REPO}:{env.get('PYTHONPATH', '')}"
    proc = subprocess.run(["bash", str(PREPARE), *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"prepare.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Bad inputs first (each must fail cleanly), then the good run in the same dir."""
    d = tmp_path_factory.mktemp("synth")
    failures = {}
    failures["voice"] = run(d, *TINY, "--test-variants", "m3,nosuchvoice", check=False)
    failures["missing"] = run(d, *TINY, "--text-source", str(d / "missing.txt"), check=False)
    (d / "empty.txt").write_text("")
    failures["empty"] = run(d, *TINY, "--text-source", str(d / "empty.txt"), check=False)
    markers_after_failures = sorted(str(p.relative_to(d)) for p in d.rglob("*.done"))
    first = run(d, *TINY)
    return d, failures, markers_after_failures, first


def load(d: Path, kind: str, split: str):
    from lhotse import load_manifest

    return load_manifest(d / "data" / "manifests" / f"synth_{kind}_{split}.jsonl.gz")


def test_bad_inputs_fail_with_clear_errors_and_no_marker(corpus):
    d, failures, markers, _ = corpus
    assert failures["voice"].returncode != 0
    assert "--test-variants" in failures["voice"].stderr and "nosuchvoice" in failures["voice"].stderr
    assert failures["missing"].returncode != 0
    assert "--text-source" in failures["missing"].stderr and "missing.txt: text source not found" in failures["missing"].stderr
    assert failures["empty"].returncode != 0 and "empty.txt: text source is empty" in failures["empty"].stderr
    assert markers == []  # nothing marked done; the good run then worked in the same dir


def test_outputs_exist_and_manifests_validate(corpus, monkeypatch):
    from lhotse import load_manifest
    from lhotse.qa import validate_recordings_and_supervisions

    d, *_ = corpus
    monkeypatch.chdir(d)  # paths in the manifests are relative to the recipe dir, as in icefall
    for split, n in (("train", 40), ("dev", 6), ("test", 6)):
        recs, sups = load(d, "recordings", split), load(d, "supervisions", split)
        validate_recordings_and_supervisions(recs, sups)
        assert len(recs) == len(sups) == n
        rec = recs[0]
        assert rec.sampling_rate == 16000 and rec.sources[0].source.endswith(".flac")
        audio = rec.load_audio()
        assert audio.shape == (1, rec.num_samples) and np.abs(audio).max() > 0.05
        cuts = load_manifest(d / "data" / "fbank" / f"synth_cuts_{split}.jsonl.gz")
        assert len(cuts) == n
        feats = cuts[0].load_features()
        assert feats.shape[1] == 80 and abs(feats.shape[0] - rec.num_samples // 160) <= 1
    lang = d / "data" / "lang_bpe_60"
    for name in ("bpe.model", "tokens.txt", "transcript_words.txt", "words.txt", "lexicon.txt"):
        assert (lang / name).is_file(), name
    tokens = (lang / "tokens.txt").read_text().splitlines()
    assert tokens[:3] == ["<blk> 0", "<sos/eos> 1", "<unk> 2"] and len(tokens) == 60
    words = (lang / "words.txt").read_text().split()
    assert words[:2] == ["<eps>", "0"]


def test_transcripts_are_librispeech_style_and_limited(corpus):
    d, *_ = corpus
    vocab = set((d / "data" / "audio" / "synth" / "vocab.txt").read_text().split())
    assert len(vocab) == 1000
    for split in ("train", "dev", "test"):
        for s in load(d, "supervisions", split):
            words = s.text.split()
            assert 4 <= len(words) <= 15 and set(words) <= vocab
            assert set(s.text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")


def test_held_out_voices_and_sentences_are_disjoint(corpus):
    d, *_ = corpus
    train = list(load(d, "supervisions", "train"))
    train_voices = {s.speaker for s in train}
    train_variants = {v.split("+")[1] for v in train_voices}
    train_texts = {s.text for s in train}
    for split in ("dev", "test"):
        sups = list(load(d, "supervisions", split))
        assert not ({s.speaker for s in sups} & train_voices)
        assert not ({s.speaker.split("+")[1] for s in sups} & train_variants)
        assert not ({s.text for s in sups} & train_texts)
    dev = {s.text for s in load(d, "supervisions", "dev")}
    assert not (dev & {s.text for s in load(d, "supervisions", "test")})


def test_second_run_does_nothing(corpus):
    d, _, _, first = corpus
    files = [p for p in (d / "data").rglob("*") if p.is_file()]
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    second = run(d, *TINY)
    assert "skipping" in second.stdout and "Stage 0: synthesise" not in second.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    assert sorted(p for p in (d / "data").rglob("*") if p.is_file()) == sorted(files)
    # other flags for a finished stage: refuse rather than silently reuse
    third = run(d, *TINY[:-4], "--num-train", "41", check=False)
    assert third.returncode != 0 and "data/audio/synth/.done was made with" in third.stderr


def test_same_seed_same_corpus(corpus, tmp_path):
    d, *_ = corpus
    # nj 1 here and 2 in the fixture: the audio must not depend on the scheduling
    run(tmp_path, *TINY[:-2], "--nj", "1", "--stop-stage", "1")
    for split in ("train", "test"):
        a = list(load(d, "supervisions", split))
        b = list(load(tmp_path, "supervisions", split))
        assert [(s.id, s.text, s.speaker) for s in a] == [(s.id, s.text, s.speaker) for s in b]
        for s in a[:8]:
            x, _ = sf.read(d / "data" / "audio" / "synth" / split / f"{s.id}.flac")
            y, _ = sf.read(tmp_path / "data" / "audio" / "synth" / split / f"{s.id}.flac")
            assert np.array_equal(x, y), s.id


def test_test_split_alone_is_the_corpus_test_split(corpus, tmp_path):
    """synthesize_corpus(splits=("test",)) recreates a model's held-out set
    without the training audio (test_trained_model.py relies on it)."""
    from icefall.synth_corpus import SynthConfig, read_plan, synthesize_corpus

    d, *_ = corpus
    config = SynthConfig(num_train=40, num_dev=6, num_test=6)
    synthesize_corpus(config, tmp_path, num_jobs=1, progress=False, splits=("test",))
    assert not (tmp_path / "train").exists() and not (tmp_path / "dev").exists()
    full = d / "data" / "audio" / "synth"
    assert read_plan(tmp_path, "test") == read_plan(full, "test")
    for u in read_plan(full, "test"):
        x, _ = sf.read(full / "test" / f"{u.id}.flac")
        y, _ = sf.read(tmp_path / "test" / f"{u.id}.flac")
        assert np.array_equal(x, y), u.id
    with pytest.raises(ValueError, match="unknown split"):
        synthesize_corpus(config, tmp_path, splits=("eval",))
