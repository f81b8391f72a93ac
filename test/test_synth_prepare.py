"""egs/synth/ASR/prepare.sh end to end on a tiny corpus, run in a temporary directory."""

import dataclasses
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
HELDOUT_FILE = REPO / "egs" / "synth" / "ASR" / "local" / "heldout" / "sentences.txt"


def tiny_heldout(d: Path) -> Path:
    """Three written sentences and one that the tiny corpus would otherwise
    use for training: it must move to the heldout split only."""
    from icefall.synth_corpus import SynthConfig, plan_corpus

    plan, _ = plan_corpus(SynthConfig(num_train=40, num_dev=6, num_test=6))
    path = d / "heldout.txt"
    path.write_text("# a comment line\nMrs. Lee paid $12 for 3 books.\n\nWe met at 7:30 on Main St.\n"
                    "I can't find my keys!\n" + plan["train"][0].text.lower() + "\n")
    return path


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
    tiny = [*TINY, "--heldout", str(tiny_heldout(d))]
    failures = {}
    failures["voice"] = run(d, *TINY, "--test-variants", "m3,nosuchvoice", check=False)
    failures["missing"] = run(d, *TINY, "--text-source", str(d / "missing.txt"), check=False)
    (d / "empty.txt").write_text("")
    failures["empty"] = run(d, *TINY, "--text-source", str(d / "empty.txt"), check=False)
    markers_after_failures = sorted(str(p.relative_to(d)) for p in d.rglob("*.done"))
    first = run(d, *tiny)
    return d, failures, markers_after_failures, first, tiny


def load(d: Path, kind: str, split: str):
    from lhotse import load_manifest

    return load_manifest(d / "data" / "manifests" / f"synth_{kind}_{split}.jsonl.gz")


def test_bad_inputs_fail_with_clear_errors_and_no_marker(corpus):
    d, failures, markers, *_ = corpus
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
    assert len(vocab) > 100  # the words of the sentences: no frequency cut by default
    for split in ("train", "dev", "test"):
        for s in load(d, "supervisions", split):
            words = s.text.split()
            assert 4 <= len(words) <= 20 and set(words) <= vocab
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
    d, _, _, first, tiny = corpus
    files = [p for p in (d / "data").rglob("*") if p.is_file()]
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    second = run(d, *tiny)
    assert "skipping" in second.stdout and "Stage 0: synthesise" not in second.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    assert sorted(p for p in (d / "data").rglob("*") if p.is_file()) == sorted(files)
    # other flags for a finished stage: refuse rather than silently reuse
    third = run(d, *TINY[:-4], "--num-train", "41", check=False)
    assert third.returncode != 0 and "data/audio/synth/.done was made with" in third.stderr


def test_same_seed_same_corpus(corpus, tmp_path):
    d, *_ = corpus
    # nj 1 here and 2 in the fixture: the audio must not depend on the scheduling
    run(tmp_path, *TINY[:-2], "--nj", "1", "--stop-stage", "1", "--heldout", str(d / "heldout.txt"))
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
    config = SynthConfig(num_train=40, num_dev=6, num_test=6, heldout=str(d / "heldout.txt"))
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


def test_heldout_split_unseen_sentences_and_voices(corpus, monkeypatch):
    from lhotse import load_manifest

    from icefall.synth_corpus import TEST_VARIANTS

    d, *_ = corpus
    monkeypatch.chdir(d)
    heldout = list(load(d, "supervisions", "heldout"))
    assert [s.text for s in heldout] == [
        "MISSUS LEE PAID TWELVE DOLLARS FOR THREE BOOKS",
        "WE MET AT SEVEN THIRTY ON MAIN STREET",
        "I CAN'T FIND MY KEYS",
        heldout[3].text,
    ]
    train = list(load(d, "supervisions", "train"))
    # the corpus would have trained on the 4th; it is in heldout only
    assert not {s.text for s in heldout} & {s.text for s in train}
    assert len(train) == 40
    assert {s.speaker.split("+")[1] for s in heldout} <= set(TEST_VARIANTS)
    cuts = load_manifest(d / "data" / "fbank" / "synth_cuts_heldout.jsonl.gz")
    assert len(cuts) == 4 and cuts[0].load_features().shape[1] == 80
    # BPE text is the train transcripts only
    bpe_text = (d / "data" / "lang_bpe_60" / "transcript_words.txt").read_text().splitlines()
    assert sorted(bpe_text) == sorted(s.text for s in train)


def test_heldout_audio_is_deterministic(corpus, tmp_path):
    from icefall.synth_corpus import SynthConfig, read_plan, synthesize_corpus

    d, *_ = corpus
    config = SynthConfig(num_train=40, num_dev=6, num_test=6, heldout=str(d / "heldout.txt"))
    # another process layout (nj 1, not 2) and the held-out split alone
    synthesize_corpus(config, tmp_path, num_jobs=1, progress=False, splits=("heldout",))
    full = d / "data" / "audio" / "synth"
    assert read_plan(tmp_path, "heldout") == read_plan(full, "heldout")
    for u in read_plan(full, "heldout"):
        x, _ = sf.read(full / "heldout" / f"{u.id}.flac")
        y, _ = sf.read(tmp_path / "heldout" / f"{u.id}.flac")
        assert np.array_equal(x, y) and np.abs(x).max() > 0.05, u.id
    # the held-out plan does not move with the corpus sizes
    other = SynthConfig(num_train=50, num_dev=7, num_test=3, heldout=str(d / "heldout.txt"))
    from icefall.synth_corpus import plan_corpus

    planned = [dataclasses.replace(u, num_samples=0) for u in read_plan(full, "heldout")]
    assert plan_corpus(other)[0]["heldout"] == planned


def test_committed_heldout_set_is_absent_from_training_text():
    """The recipe's held-out sentences never occur in a default-size corpus,
    and few of their words are unseen there."""
    from icefall.synth_corpus import SynthConfig, plan_corpus, read_heldout
    from icefall.text import oov_rate

    heldout = read_heldout(HELDOUT_FILE)
    assert len(heldout) >= 200 and len(set(heldout)) == len(heldout)
    plan, _ = plan_corpus(SynthConfig(heldout=str(HELDOUT_FILE)))
    corpus_texts = {u.text for split in ("train", "dev", "test") for u in plan[split]}
    assert not corpus_texts & set(heldout)
    assert [u.text for u in plan["heldout"]] == heldout
    unseen, total = oov_rate(heldout, {w for u in plan["train"] for w in u.text.split()})
    assert total > 2000 and unseen / total < 0.06  # 4.6% with the default 6000 sentences


def test_interrupted_stage_is_not_reused_with_other_flags(tmp_path):
    """fbank stopped after writing its cuts but before its marker (killed),
    then re-run with --perturb-speed true: the train cuts must be redone with
    speed perturbation, not reused."""
    small = ["--num-train", "8", "--num-dev", "2", "--num-test", "2", "--vocab-size", "30",
             "--nj", "1", "--heldout", "none"]
    run(tmp_path, *small, "--stop-stage", "1")
    # a python that kills prepare.sh once the fbank script has finished
    wrapper = tmp_path / "python-then-kill"
    wrapper.write_text(f"""#!/bin/bash
"{sys.executable}" "$@"; status=$?
case "$*" in *compute_fbank*) kill -9 $PPID ;; esac
exit $status
""")
    wrapper.chmod(0o755)
    env = dict(os.environ, PYTHON=str(wrapper), PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}")
    killed = subprocess.run(["bash", str(PREPARE), *small, "--stage", "2", "--stop-stage", "2",
                             "--perturb-speed", "false"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert killed.returncode != 0
    fbank = tmp_path / "data" / "fbank"
    assert (fbank / "synth_cuts_train.jsonl.gz").is_file() and not (fbank / ".synth.done").exists()
    again = run(tmp_path, *small, "--stage", "2", "--stop-stage", "2", "--perturb-speed", "true")
    assert "removing its partial outputs" in again.stdout
    from lhotse import load_manifest

    assert len(load_manifest(fbank / "synth_cuts_train.jsonl.gz")) == 3 * 8  # x3: speeds 0.9, 1.0, 1.1
    assert (fbank / ".synth.done").read_text().strip() == "perturb_speed=true"
    assert not (fbank / ".synth.done.started").exists()


def test_tail_is_drawn_apart_from_the_other_draws():
    """Planning a tail moves nothing else: a corpus planned without one
    (tail None, as before the option) has the same sentences, voices and jitter."""
    import dataclasses

    from icefall.synth_corpus import SynthConfig, plan_corpus

    with_tail, _ = plan_corpus(SynthConfig(num_train=40, num_dev=6, num_test=6))
    without, _ = plan_corpus(SynthConfig(num_train=40, num_dev=6, num_test=6, tail=None))
    for split in with_tail:
        tails = [u.tail for u in with_tail[split]]
        assert all(0.05 <= t <= 0.15 for t in tails) and len(set(tails)) > 1
        assert all(u.tail is None for u in without[split])
        assert [dataclasses.replace(u, tail=None) for u in with_tail[split]] == without[split]


def test_lead_range_moves_only_the_leading_silence():
    """--lead sets the range of the leading silences and nothing else: the
    same sentences, voices and jitter, each lead at the same point of the
    new range as of the old one (one draw per utterance either way)."""
    import dataclasses

    from icefall.synth_corpus import SynthConfig, check_config, plan_corpus

    wide, _ = plan_corpus(SynthConfig(num_train=40, num_dev=6, num_test=6))
    short, _ = plan_corpus(SynthConfig(num_train=40, num_dev=6, num_test=6, lead=(0.02, 0.15)))
    for split in short:
        for a, b in zip(short[split], wide[split]):
            assert 0.02 <= a.lead <= 0.15 and 0.05 <= b.lead <= 0.3
            assert abs((a.lead - 0.02) / 0.13 - (b.lead - 0.05) / 0.25) < 0.01
            assert dataclasses.replace(a, lead=b.lead) == b
    with pytest.raises(ValueError, match="--lead"):
        check_config(SynthConfig(lead=(0.2, 0.1)))
