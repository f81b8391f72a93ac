"""icefall/trainer.py through pts3's train.py on the tiny synth recipe: the
exp-dir lock, SIGTERM, abandoned checkpoints on resume, too-short cuts,
one-line user errors, --help, bf16 and the TensorBoard file name."""

import gzip
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from icefall.checkpoint import find_checkpoints, load_file
from icefall.expdir import ExpDirInUse, ExpDirLock
from icefall.trainer import make_tb_writer
from recipe_fixture import REPO, env
from test_recipe_train import batch_losses

TRAIN_PY = REPO / "egs/librispeech/ASR/pruned_transducer_stateless3/train.py"


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_help_shows_every_default_and_imports_no_heavy_modules():
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{str(TRAIN_PY)!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(TRAIN_PY)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ['lhotse', 'sentencepiece', 'torch.utils.tensorboard', 'tensorboard']\n"
        "print('IMPORTED', [m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("IMPORTED []"), out[-500:]
    help_text = out.split("IMPORTED")[0]
    assert "Usage, from egs/<dataset>/ASR" in help_text  # the description, line breaks kept
    flags = re.findall(r"^  (--[\w-]+)", help_text, flags=re.M)
    assert len(flags) > 50 and "--use-bf16" in flags
    # Each flag's help ends with its default; booleans say what they accept.
    entries = re.split(r"\n  (?=--)", help_text.split("options:", 1)[1])
    for entry in entries[1:]:
        assert "(default:" in entry, entry
    for flag in ("--use-fp16", "--tensorboard", "--shuffle"):
        entry = next(e for e in entries if e.startswith(flag + " "))
        assert "true/false" in " ".join(entry.split()), entry


@pytest.fixture()
def wrong_dir(tmp_path):
    return tmp_path


@pytest.mark.parametrize("case, extra, expected", [
    ("both_precisions", ["--use-fp16", "1", "--use-bf16", "1"], "--use-fp16 and --use-bf16"),
    ("epochs", ["--start-epoch", "5", "--num-epochs", "3"], "--start-epoch 5 is after --num-epochs 3"),
    ("no_bpe", ["--bpe-model", "data/nope/bpe.model"], "--bpe-model data/nope/bpe.model: not found"),
    ("bad_bpe", ["--bpe-model", "BAD"], "not a sentencepiece model"),
    ("no_ckpt", ["--start-epoch", "99", "--num-epochs", "99"], "epoch-98.pt not found; "),
    ("bad_ckpt", ["--start-batch", "7"], "checkpoint-7.pt: not a readable checkpoint"),
    ("no_manifests", ["--manifest-dir", "data/nope"], "--manifest-dir data/nope: not found"),
    ("alpha", ["--subword-sampling-alpha", "1.5"], "--subword-sampling-alpha must be in [0, 1], got 1.5"),
])
def test_user_mistakes_give_one_line_and_exit_2(tiny_recipe, tmp_path, case, extra, expected):
    exp = tiny_recipe.workdir / "exp_mistakes"
    exp.mkdir(exist_ok=True)
    (exp / "checkpoint-7.pt").write_bytes(b"PK\x03\x04 truncated")
    shutil.copy(tiny_recipe.workdir / tiny_recipe.exp_dir / "epoch-1.pt", exp / "epoch-1.pt")
    bad_bpe = tmp_path / "bpe.model"
    bad_bpe.write_text("not a model")
    extra = [str(bad_bpe) if a == "BAD" else a for a in extra]
    line = one_line_error(tiny_recipe.train("exp_mistakes", *extra, check=False))
    assert expected in line, line
    if case == "no_ckpt":
        assert line.endswith("has epoch-1.pt, checkpoint-7.pt"), line


def test_running_from_the_wrong_folder_says_where_to_run(tmp_path):
    proc = subprocess.run([sys.executable, str(TRAIN_PY)], cwd=tmp_path, env=env(), capture_output=True, text=True)
    line = one_line_error(proc)
    assert "--bpe-model data/lang_bpe_500/bpe.model: not found" in line and "run from egs/<dataset>/ASR" in line


def test_second_run_in_the_exp_dir_is_refused_and_sigterm_saves_and_stops(tiny_recipe):
    exp = tiny_recipe.workdir / "exp_sigterm"
    args = ["--num-epochs", "50", "--log-interval", "1", "--save-every-n", "1000", "--tensorboard", "False"]
    proc = subprocess.Popen([sys.executable, *tiny_recipe.train_args("exp_sigterm", *args)], cwd=tiny_recipe.workdir,
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "(global 2)" in line:
                break
        assert (exp / ".lock").read_text().strip() == str(proc.pid)
        second = tiny_recipe.train("exp_sigterm", *args, check=False)
        assert f"another training (pid {proc.pid}) is using it" in one_line_error(second)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, rest[-3000:]
    assert "SIGTERM received" in rest and "Traceback" not in rest
    m = re.search(r"stopped by SIGTERM after global batch (\d+); saved (\S+); resume with --start-batch (\d+)", rest)
    assert m and m[1] == m[3], rest[-2000:]
    batch = int(m[1])
    assert find_checkpoints(exp)[0].name == f"checkpoint-{batch}.pt"
    assert load_file(exp / f"checkpoint-{batch}.pt")["batch_idx_train"] == batch
    assert not (exp / ".lock").exists()
    resumed = tiny_recipe.train("exp_sigterm", *args, "--start-batch", str(batch), "--max-batches", str(batch + 1))
    assert f"(global {batch + 1})" in resumed.stderr


def test_a_stale_lock_is_taken_over_and_a_live_one_refused(tmp_path, caplog):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / ".lock").write_text(f"{dead.pid}\n")
    with caplog.at_level(logging.WARNING):
        lock = ExpDirLock(tmp_path).acquire()
    assert f"stale lock of pid {dead.pid}" in caplog.text
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    lock.release()
    assert not (tmp_path / ".lock").exists()
    live = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / ".lock").write_text(f"{live.pid}\n")
        with pytest.raises(ExpDirInUse, match=f"pid {live.pid}"):
            ExpDirLock(tmp_path).acquire()
    finally:
        live.kill()
        live.wait()


def test_resume_below_newer_checkpoints_moves_them_aside_and_keeps_its_own(tiny_recipe):
    exp = tiny_recipe.workdir / "exp_abandon"
    common = ["--num-epochs", "50", "--save-every-n", "2", "--tensorboard", "False"]
    tiny_recipe.train("exp_abandon", *common, "--max-batches", "6", "--keep-last-k", "0")
    assert [p.name for p in find_checkpoints(exp)] == ["checkpoint-6.pt", "checkpoint-4.pt", "checkpoint-2.pt"]
    old4 = load_file(exp / "checkpoint-4.pt")["model"]["joiner.output_linear.weight"]
    # Resume from batch 2 with another loss weight (a different run), keeping 1.
    out = tiny_recipe.train("exp_abandon", *common, "--max-batches", "4", "--keep-last-k", "1",
                            "--start-batch", "2", "--simple-loss-scale", "0.3")
    assert [p.name for p in find_checkpoints(exp)] == ["checkpoint-4.pt"]  # this run's newest
    assert not torch.equal(load_file(exp / "checkpoint-4.pt")["model"]["joiner.output_linear.weight"], old4)
    aside = list(exp.glob("abandoned-*"))
    assert len(aside) == 1
    moved = sorted(p.name for p in aside[0].iterdir())
    # Everything the first run wrote after batch 2 (epoch 1 ended after it), and nothing else.
    assert {"checkpoint-4.pt", "checkpoint-6.pt", "epoch-1.pt"} <= set(moved), moved
    assert all(load_file(aside[0] / name)["batch_idx_train"] > 2 for name in moved)
    assert torch.equal(load_file(aside[0] / "checkpoint-4.pt")["model"]["joiner.output_linear.weight"], old4)
    assert f"into {aside[0].relative_to(tiny_recipe.workdir)}" in out.stderr


def _write_cuts(cuts, path: Path) -> None:
    with gzip.open(path, "wt") as f:
        for c in cuts:
            f.write(json.dumps(c.to_dict()) + "\n")


def test_too_short_validation_cut_and_unknown_characters_are_dropped_and_counted(tiny_recipe):
    from lhotse import load_manifest

    src = tiny_recipe.workdir / "data/fbank"
    dst = tiny_recipe.workdir / "data/fbank_short"
    dst.mkdir(exist_ok=True)
    dev = list(load_manifest(src / "synth_cuts_dev.jsonl.gz"))
    short = dev[0].truncate(duration=0.05)
    short.id = "too-short"
    _write_cuts(dev + [short], dst / "synth_cuts_dev.jsonl.gz")
    train = list(load_manifest(src / "synth_cuts_train.jsonl.gz"))
    train[0].supervisions[0].text += " \u03a9\u03a9"
    _write_cuts(train, dst / "synth_cuts_train.jsonl.gz")
    out = tiny_recipe.train("exp_short", "--manifest-dir", "data/fbank_short", "--num-epochs", "1",
                            "--tensorboard", "False")
    assert (tiny_recipe.workdir / "exp_short/epoch-1.pt").is_file()
    n = len(dev)
    assert f"validation set: kept {n} of {n + 1} cuts; dropped 1 too short" in out.stderr
    assert "1 cut(s) have characters outside the BPE model, mapped to <unk>: '\u03a9' x2" in out.stderr


def test_bf16_autocast_trains_on_cpu(tiny_recipe):
    common = ["--num-epochs", "1", "--max-batches", "2", "--log-interval", "1", "--tensorboard", "False"]
    fp32 = batch_losses(tiny_recipe.train("exp_fp32", *common).stderr)
    bf16 = batch_losses(tiny_recipe.train("exp_bf16", *common, "--use-bf16", "True").stderr)
    assert sorted(bf16) == [1, 2]
    for i in (1, 2):
        assert bf16[i] != fp32[i]  # autocast really ran in bfloat16
        assert all(abs(a - b) <= 0.05 * abs(a) for a, b in zip(fp32[i], bf16[i])), (fp32[i], bf16[i])


def test_tensorboard_file_name_has_no_host_name(tmp_path):
    writer = make_tb_writer(tmp_path / "tb")
    writer.add_scalar("x", 1.0, 1)
    writer.close()
    (event_file,) = (tmp_path / "tb").iterdir()
    assert event_file.name.startswith("events.out.tfevents.")
    assert socket.gethostname() not in event_file.name
    assert socket.gethostname().encode() not in event_file.read_bytes()


LR_LINE = re.compile(r"Epoch (\d+), batch (\d+)/(\d+) \(global (\d+)\).*?; lr ([\d.e+-]+);")


def test_lr_cooldown_scales_the_schedule_down_to_zero_and_survives_a_resume(tiny_recipe):
    """--lr-cooldown-epochs 2 of 3: the rate a batch's update used (the one
    logged) over the plain run's is 1 in epoch 1 and (3 - epoch progress
    before the batch) / 2 after it, worked out here from each line's epoch,
    batch and batches per epoch; a mid-epoch resume in the cooldown logs the
    same rates and losses."""
    common = ["--num-epochs", "3", "--log-interval", "1", "--tensorboard", "False", "--save-every-n", "4"]
    plain = {int(m[3]): m for m in LR_LINE.findall(tiny_recipe.train("exp_cool_plain", *common).stderr)}
    out = tiny_recipe.train("exp_cool", *common, "--lr-cooldown-epochs", "2").stderr
    cool = {int(m[3]): m for m in LR_LINE.findall(out)}
    assert sorted(cool) == sorted(plain) and len(cool) >= 9
    for g, (epoch, batch, per_epoch, _, lr) in cool.items():
        e, b, n = int(epoch), int(batch), int(per_epoch)
        expected = 1.0 if e == 1 else max(0.0, min(1.0, (3 - (e - 1 + min((b - 1) / n, 1.0))) / 2))
        assert float(lr) == pytest.approx(float(plain[g][4]) * expected, rel=2e-3, abs=1e-9), (g, lr, expected)
    last = max(cool)

    # Stop at a checkpoint inside the cooldown, resume from it.
    resume_at = max(g for g in cool if g % 4 == 0 and int(cool[g][0]) >= 2 and g < last)
    tiny_recipe.train("exp_cool_part", *common, "--lr-cooldown-epochs", "2", "--max-batches", str(resume_at))
    resumed = tiny_recipe.train("exp_cool_part", *common, "--lr-cooldown-epochs", "2",
                                "--start-batch", str(resume_at)).stderr
    again = {int(m[3]): m for m in LR_LINE.findall(resumed)}
    assert sorted(again) == [g for g in sorted(cool) if g > resume_at]
    for g in again:
        assert again[g][4] == cool[g][4], (g, again[g], cool[g])
    a, b = batch_losses(out), batch_losses(resumed)
    for g in again:
        assert all(abs(x - y) <= 1e-5 * max(1.0, abs(x)) for x, y in zip(a[g], b[g])), (g, a[g], b[g])


def test_lr_cooldown_longer_than_the_run_is_refused(tiny_recipe):
    line = one_line_error(tiny_recipe.train("exp_cool_bad", "--num-epochs", "2", "--lr-cooldown-epochs", "2",
                                            check=False))
    assert "--lr-cooldown-epochs must be in [0, --num-epochs - 1 = 1], got 2.0" in line


def test_first_epoch_length_estimate_follows_the_batches_seen():
    from icefall.trainer import refine_epoch_estimate

    # 50,000 s of audio per process, --max-duration 25: 2000 batches if full;
    # batches seen so far hold 23 s each on average -> 2174.
    assert refine_epoch_estimate(2000, 0, 0, 0.0, 50_000.0) == 2000
    assert refine_epoch_estimate(2000, 100, 100, 2300.0, 50_000.0) == 2174
    # resumed at batch 500: 20 batches of 20 s since -> 2500
    assert refine_epoch_estimate(2000, 520, 20, 400.0, 50_000.0) == 2500
    # never below the batches already trained
    assert refine_epoch_estimate(2000, 2100, 100, 2600.0, 50_000.0) == 2100


def test_subword_sampling_segments_training_batches_only(tiny_recipe):
    """--subword-sampling-alpha: training batches get sampled segmentations
    of their text, a function of (seed, update, rank); validation batches the
    best one."""
    from types import SimpleNamespace

    from icefall.tokens import load_bpe_model
    from icefall.trainer import Trainer
    from icefall.utils import AttributeDict

    sp = load_bpe_model(tiny_recipe.workdir / tiny_recipe.lang_dir / "bpe.model")
    texts = ["THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG", "SHE SELLS SEA SHELLS BY THE SEA SHORE"]

    def tokens(training, update, rank=0, alpha=0.2):
        params = AttributeDict(subword_sampling_alpha=alpha, seed=42, batch_idx_train=update)
        trainer = SimpleNamespace(params=params, sp=sp, rank=rank)
        return Trainer._add_tokens(trainer, {"supervisions": {"text": texts}}, training)["supervisions"]["token_ids"]

    best = sp.encode(texts, out_type=int)
    assert tokens(False, 3) == best and tokens(True, 3, alpha=0.0) == best
    sampled = [tokens(True, u, r) for u in range(6) for r in range(2)]
    assert all([sp.decode(ids) for ids in s] == texts for s in sampled)
    assert sum(s != best for s in sampled) >= 8 and len({str(s) for s in sampled}) >= 8
    assert tokens(True, 4, 1) == tokens(True, 4, 1)
