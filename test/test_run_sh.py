"""egs/synth/ASR/run.sh's small variant at tiny size through every stage, in a
copy of egs/ (as a user's clone), then re-runs: a finished training is not
redone, a missing last epoch is resumed, bad --avg/--num-epochs are caught
before anything runs."""

import shutil
import subprocess
from pathlib import Path

import pytest

from recipe_fixture import REPO, TINY_MODEL, env, ignore_outputs

TINY = [
    "--num-train", "40", "--num-dev", "4", "--num-test", "4", "--vocab-size", "60",
    "--num-epochs", "2", "--phase2-epoch", "2", "--world-size", "1", "--max-duration", "40",
    "--model-warm-step", "4", "--lr-batches", "50", "--average-period", "1",
    *(a.replace("_", "-") for a in TINY_MODEL),
]


def run_sh(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "run.sh", *args], cwd=workdir, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.sh {args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("runsh")
    shutil.copytree(REPO / "egs", root / "egs", symlinks=True, ignore=ignore_outputs)
    workdir = root / "egs/synth/ASR"
    heldout = root / "heldout.txt"
    heldout.write_text("I left my keys on the kitchen table.\nWe met at 7:30 near St. Paul's.\n")
    args = [*TINY, "--heldout", str(heldout), "--avg", "8"]
    first = run_sh(workdir, *args)  # --avg 8 is more than 2 epochs allow
    return workdir, args, first


def test_every_stage_runs_and_avg_is_clamped(recipe):
    workdir, _, first = recipe
    out = first.stdout + first.stderr
    assert "--avg 8 needs 9 epochs" in out and "but --num-epochs is 2: using --avg 1" in out
    exp = workdir / "pruned_transducer_stateless3/exp"
    for name in ("epoch-1.pt", "epoch-2.pt", "pretrained.pt"):
        assert (exp / name).is_file(), name
    assert "phase 1" in out and "phase 2" in out
    for i in range(7):
        assert f"Stage {i}" in out, i
    # The default --rnnt-type modified: stage 2 decodes one token per frame
    # (greedy and modified beam search), stage 5 the export the same way.
    summaries = sorted(p.name for p in exp.glob("*/wer-summary-test-*.txt"))
    assert summaries == ["wer-summary-test-beam_size_4-epoch-2-avg-1-use-averaged-model.txt",
                         "wer-summary-test-greedy_search-epoch-2-avg-1-use-averaged-model.txt",
                         "wer-summary-test-greedy_search-epoch-9999-avg-1.txt"], summaries
    import torch

    config = torch.load(exp / "pretrained.pt", weights_only=True)["config"]
    assert config["rnnt_type"] == "modified", config
    assert (workdir / "data/fbank/synth_cuts_heldout.jsonl.gz").is_file()


def test_rerun_does_not_train_again(recipe):
    workdir, args, _ = recipe
    exp = workdir / "pruned_transducer_stateless3/exp"
    before = {p.name: p.stat().st_mtime_ns for p in exp.glob("epoch-[0-9].pt")}
    again = run_sh(workdir, *args, "--stage", "1", "--stop-stage", "1")
    assert "training is done, skipping" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in exp.glob("epoch-[0-9].pt")} == before


def test_rerun_resumes_after_the_last_epoch(recipe):
    workdir, args, _ = recipe
    exp = workdir / "pruned_transducer_stateless3/exp"
    epoch1 = (exp / "epoch-1.pt").stat().st_mtime_ns
    (exp / "epoch-2.pt").unlink()
    again = run_sh(workdir, *args, "--stage", "1", "--stop-stage", "1")
    assert "resuming at epoch 2" in again.stdout and "phase 1" not in again.stdout
    assert (exp / "epoch-2.pt").is_file() and (exp / "epoch-1.pt").stat().st_mtime_ns == epoch1


@pytest.mark.parametrize("flags, message", [
    (["--avg", "0"], "--avg must be a whole number >= 1, got '0'"),
    (["--num-epochs", "two"], "--num-epochs must be a whole number >= 1, got 'two'"),
    (["--use-bf16", "maybe"], "--use-bf16 must be true, false or auto, got 'maybe'"),
    (["--lr-cooldown-epochs", "x"], "--lr-cooldown-epochs must be a number >= 0, got 'x'"),
    (["--rnnt-type", "constrained"], "--rnnt-type must be regular or modified, got 'constrained'"),
    (["--max-sym-per-frame", "0"], "--max-sym-per-frame must be auto or a whole number >= 1, got '0'"),
    (["--context-size", "0"], "--context-size must be a whole number >= 1, got '0'"),
    (["--subword-sampling-alpha", "1.5"], "--subword-sampling-alpha must be a number in [0, 1], got '1.5'"),
    (["--subword-sampling-alpha", "-0.1"], "--subword-sampling-alpha must be a number in [0, 1], got '-0.1'"),
    (["--use-ctc", "maybe"], "--use-ctc must be true or false, got 'maybe'"),
    (["--ctc-loss-scale", "-1"], "--ctc-loss-scale must be a number >= 0, got '-1'"),
    (["--subsampling-factor", "8"], "--subsampling-factor must be 4 or 6, got '8'"),
])
def test_bad_epoch_flags_fail_before_anything_runs(tmp_path, flags, message):
    workdir = REPO / "egs/synth/ASR"
    proc = run_sh(workdir, "--exp-dir", str(tmp_path / "exp"), "--stage", "1", *flags, check=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "exp").exists()
