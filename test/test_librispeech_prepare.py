"""egs/librispeech/ASR/prepare.sh, every stage after the download, on a tiny
LibriSpeech-layout folder made with the synthetic-corpus tools."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
PREPARE = REPO / "egs" / "librispeech" / "ASR" / "prepare.sh"

SENTENCES = [
    "THE OLD TOWN WAS BUILT NEAR THE RIVER", "PEOPLE CAME TO THE TOWN FROM THE NORTH",
    "THE RIVER WAS WIDE AND THE TOWN GREW", "A NEW ROAD WAS BUILT TO THE SOUTH",
    "THE CITY HAS MANY OLD BUILDINGS", "MOST PEOPLE WORK IN THE NEW CITY",
    "THE NORTH OF THE COUNTRY IS COLD", "FARMERS GROW WHEAT IN THE VALLEY",
    "THE SCHOOL WAS OPENED IN NINETEEN TWELVE", "SHIPS CARRY GOODS ALONG THE COAST",
    "THE MUSEUM SHOWS ART FROM MANY COUNTRIES", "WINTERS ARE LONG AND SUMMERS ARE SHORT",
]
PARTS = {"train-clean-100": ("en-us+m1", "en-gb-x-rp+f2"), "dev-clean": ("en-us+m3",),
         "test-clean": ("en-029+f3",), "test-other": ("en+m5",)}


def make_layout(root: Path) -> None:
    """LibriSpeech/<part>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac + .trans.txt"""
    from icefall.synth_corpus import Utterance, render

    k = 0
    for p, (part, voices) in enumerate(PARTS.items()):
        for s, voice in enumerate(voices):
            spk, chapter = 100 + 10 * p + s, 2000 + p
            d = root / "LibriSpeech" / part / str(spk) / str(chapter)
            d.mkdir(parents=True)
            n = 6 if part.startswith("train") else 2
            lines = []
            for i in range(n):
                text = SENTENCES[k % len(SENTENCES)]
                k += 1
                uid = f"{spk}-{chapter}-{i:04d}"
                utt = Utterance(id=uid, split=part, text=text, voice=voice, rate=180, pitch=50,
                                pitch_range=50, snr=40.0, gain=0.5, lead=0.1, noise_seed=i)
                sf.write(d / f"{uid}.flac", render(utt), 16000, subtype="PCM_16")
                lines.append(f"{uid} {text}\n")
            (d / f"{spk}-{chapter}.trans.txt").write_text("".join(lines))


def run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["PYTHON"] = sys.executable
    env["PYTHONPATH"] = f"{REPO}:{env.get('PYTHONPATH', '')}"
    proc = subprocess.run(["bash", str(PREPARE), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"prepare.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("libri")
    make_layout(root / "download")
    work = root / "exp"
    work.mkdir()
    flags = ["--stage", "1", "--dl-dir", str(root / "download"), "--vocab-size", "40"]
    # a corrupt file first: a clear error naming it, nothing marked done
    victim = next((root / "download" / "LibriSpeech" / "dev-clean").rglob("*.flac"))
    good = victim.read_bytes()
    victim.write_bytes(b"RIFF garbage that is not audio" * 20)
    bad = run(work, *flags, check=False)
    markers = list(work.rglob("*.done"))
    victim.write_bytes(good)
    run(work, *flags)
    return work, bad, victim, markers, flags


def test_corrupt_audio_is_a_clear_error(prepared):
    work, bad, victim, markers, _ = prepared
    assert bad.returncode != 0
    assert f"{victim}: corrupt audio" in bad.stderr
    assert markers == []


def test_cut_files_named_as_icefall_with_speed_perturbation(prepared, monkeypatch):
    from lhotse import load_manifest

    work, *_ = prepared
    fbank = work / "data" / "fbank"
    for part in PARTS:
        assert (fbank / f"librispeech_cuts_{part}.jsonl.gz").is_file(), part
    train = load_manifest(fbank / "librispeech_cuts_train-clean-100.jsonl.gz")
    assert len(train) == 3 * 12
    speeds = sorted({c.id.rsplit("_sp", 1)[1] if "_sp" in c.id else "1.0" for c in train})
    assert speeds == ["0.9", "1.0", "1.1"]
    dev = load_manifest(fbank / "librispeech_cuts_dev-clean.jsonl.gz")
    assert len(dev) == 2
    monkeypatch.chdir(work)  # feature paths are relative to the recipe dir
    for cut in (train[0], dev[0]):
        feats = cut.load_features()
        assert feats.shape[1] == 80 and abs(feats.shape[0] - cut.num_frames) <= 1
    # 0.9x speed: longer
    by_id = {c.id: c for c in train}
    base = next(c for c in train if "_sp" not in c.id)
    assert by_id[base.id + "_sp0.9"].duration > base.duration > by_id[base.id + "_sp1.1"].duration


def test_bpe_and_lang_dir(prepared):
    from icefall.tokens import read_lexicon, read_tokens

    work, *_ = prepared
    lang = work / "data" / "lang_bpe_40"
    tokens = read_tokens(lang / "tokens.txt")
    assert len(tokens) == 40 and tokens[0] == "<blk>" and tokens[1] == "<sos/eos>" and tokens[2] == "<unk>"
    transcripts = (lang / "transcript_words.txt").read_text().splitlines()
    assert len(transcripts) == 12  # train only, not the speed-perturbed copies
    lexicon = dict((w, p) for w, p in read_lexicon(lang / "lexicon.txt"))
    assert "TOWN" in lexicon and all(t in tokens for t in lexicon["TOWN"])
    assert "<UNK>" in lexicon


def test_rerun_does_nothing(prepared):
    work, _, _, _, flags = prepared
    files = {p: p.stat().st_mtime_ns for p in (work / "data").rglob("*") if p.is_file()}
    again = run(work, *flags)
    assert again.stdout.count("skipping") == 4
    assert {p: p.stat().st_mtime_ns for p in (work / "data").rglob("*") if p.is_file()} == files


def test_interrupted_fbank_is_redone_with_new_flags(tmp_path):
    """The fbank stage killed after writing its cuts but before its marker,
    then re-run with --perturb-speed false: no speed-perturbed cuts may remain."""
    from lhotse import load_manifest

    make_layout(tmp_path / "download")
    flags = ["--dl-dir", str(tmp_path / "download"), "--vocab-size", "40"]
    run(tmp_path, "--stage", "1", "--stop-stage", "1", *flags)
    wrapper = tmp_path / "python-then-kill"  # kills prepare.sh once the fbank script is done
    wrapper.write_text(f'#!/bin/bash\n"{sys.executable}" "$@"; s=$?\n'
                       'case "$*" in *compute_fbank*) kill -9 $PPID ;; esac\nexit $s\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, PYTHON=str(wrapper), PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}")
    killed = subprocess.run(["bash", str(PREPARE), "--stage", "3", "--stop-stage", "3", *flags],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    fbank = tmp_path / "data" / "fbank"
    assert killed.returncode != 0 and not (fbank / ".librispeech.done").exists()
    assert len(load_manifest(fbank / "librispeech_cuts_train-clean-100.jsonl.gz")) == 36
    again = run(tmp_path, "--stage", "3", "--stop-stage", "3", "--perturb-speed", "false", *flags)
    assert "removing its partial outputs" in again.stdout
    assert len(load_manifest(fbank / "librispeech_cuts_train-clean-100.jsonl.gz")) == 12
    assert (fbank / ".librispeech.done").read_text().split()[0] == "perturb_speed=false"
