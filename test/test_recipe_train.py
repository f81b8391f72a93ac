"""train.py on the tiny synth recipe: checkpoints, resume, kill -9, DDP."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import torch

from icefall.checkpoint import find_checkpoints, load_file
from recipe_fixture import NUM_EPOCHS, env

LOSS_LINE = re.compile(r"\(global (\d+)\), batch size \d+, loss per frame: loss ([\d.e+-]+), "
                       r"simple_loss ([\d.e+-]+), pruned_loss ([\d.e+-]+)")


def batch_losses(output: str) -> dict:
    return {int(m[0]): tuple(map(float, m[1:])) for m in LOSS_LINE.findall(output)}


def test_training_writes_every_kind_of_checkpoint(tiny_recipe):
    exp = tiny_recipe.workdir / tiny_recipe.exp_dir
    for n in range(1, NUM_EPOCHS + 1):
        assert (exp / f"epoch-{n}.pt").is_file()
    assert (exp / "best-train-loss.pt").is_file() and (exp / "best-valid-loss.pt").is_file()
    assert len(find_checkpoints(exp)) == 3  # --keep-last-k 3
    assert list((exp / "log").glob("log-train-*")) and list((exp / "tensorboard").iterdir())

    ckpt = torch.load(exp / f"epoch-{NUM_EPOCHS}.pt", weights_only=True)
    for key in ("model", "model_avg", "optimizer", "scheduler", "sampler", "config", "rng_state",
                "batch_idx_train", "best_train_loss", "best_valid_loss"):
        assert key in ckpt, key
    assert ckpt["config"]["encoder_dim"] == 64 and ckpt["config"]["vocab_size"] == 100
    assert all(v.dtype == torch.float64 for v in ckpt["model_avg"].values() if v.is_floating_point())
    text = repr({k: v for k, v in ckpt.items() if k not in ("model", "model_avg", "optimizer")})
    assert "hostname" not in text.lower() and "ip_address" not in text.lower()
    log = next((exp / "log").glob("log-train-*")).read_text()
    assert "throughput" in log and "s of audio per second" in log


def test_resume_mid_epoch_gives_the_same_losses(tiny_recipe):
    """6 batches in one go against 3 batches, a stop, and a resume from
    checkpoint-3.pt: batches 4..6 must have the same losses (dropout and
    SpecAugment included, so the random states must be restored)."""
    common = ["--num-epochs", "2", "--log-interval", "1", "--save-every-n", "3", "--tensorboard", "False"]
    full = tiny_recipe.train("exp_resume_full", *common, "--max-batches", "6")
    tiny_recipe.train("exp_resume_part", *common, "--max-batches", "3")
    resumed = tiny_recipe.train("exp_resume_part", *common, "--max-batches", "6", "--start-batch", "3")
    a, b = batch_losses(full.stderr), batch_losses(resumed.stderr)
    assert sorted(a) == [1, 2, 3, 4, 5, 6] and sorted(b) == [4, 5, 6]
    for i in (4, 5, 6):
        assert a[i] == b[i] or all(abs(x - y) <= 1e-5 * max(1.0, abs(x)) for x, y in zip(a[i], b[i])), (i, a[i], b[i])


def test_resume_from_epoch_gives_the_same_losses(tiny_recipe):
    common = ["--log-interval", "1", "--tensorboard", "False"]
    full = tiny_recipe.train("exp_epoch_full", "--num-epochs", "2", *common)
    tiny_recipe.train("exp_epoch_part", "--num-epochs", "1", *common)
    resumed = tiny_recipe.train("exp_epoch_part", "--num-epochs", "2", "--start-epoch", "2", *common)
    a, b = batch_losses(full.stderr), batch_losses(resumed.stderr)
    assert b and set(b) <= set(a)
    for i in b:
        assert all(abs(x - y) <= 1e-5 * max(1.0, abs(x)) for x, y in zip(a[i], b[i])), (i, a[i], b[i])


def test_kill_9_loses_at_most_the_batches_since_the_last_checkpoint(tiny_recipe):
    exp = tiny_recipe.workdir / "exp_kill"
    cmd = [sys.executable, *tiny_recipe.train_args("exp_kill", "--num-epochs", "50", "--save-every-n", "2",
                                                   "--tensorboard", "False")]
    proc = subprocess.Popen(cmd, cwd=tiny_recipe.workdir, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(find_checkpoints(exp)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    last = find_checkpoints(exp)[0]
    batch = int(last.stem.split("-")[1])
    assert load_file(last)["batch_idx_train"] == batch  # the newest checkpoint is whole
    # Resume from it and train a few more batches.
    out = subprocess.run(cmd + ["--start-batch", str(batch), "--max-batches", str(batch + 2)],
                         cwd=tiny_recipe.workdir, env=env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from exp_kill/checkpoint-{batch}.pt" in out.stderr


def test_ddp_with_two_cpu_processes(tiny_recipe):
    # Another training holds icefall's usual fixed port 12354 (or something
    # else already does): without --master-port, ours must pick a free one.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        try:
            busy.bind(("127.0.0.1", 12354))
            busy.listen()
        except OSError:
            pass  # already taken by someone else: just as busy
        out = tiny_recipe.train("exp_ddp", "--world-size", "2", "--num-epochs", "1", "--max-batches", "2",
                                "--log-interval", "1", "--tensorboard", "False", "--save-every-n", "2")
    assert "with 2 process(es)" in out.stderr
    # The two processes share the cores instead of each taking all of them.
    threads = int(re.search(r"process\(es\), (\d+) CPU thread\(s\) each", out.stderr)[1])
    assert 2 * threads <= max(2, len(os.sched_getaffinity(0)))
    # Only rank 0 logs to the console; each rank writes its own log file.
    assert "(0/2)" in out.stderr and "(1/2)" not in out.stderr
    logs = sorted((tiny_recipe.workdir / "exp_ddp/log").glob("log-train-*"))
    assert [p.name[-2:] for p in logs] == ["-0", "-1"], logs
    assert "(1/2)" in logs[1].read_text() and "loss per frame" in logs[1].read_text()
    assert "find_unused_parameters" not in out.stderr  # DDP's warning when nothing is unused
    assert out.stderr.count("params: {") == 1  # the config, printed once
    # Progress: batch i/N with the ETA of the epoch and of the run (rank 0).
    assert re.search(r"Epoch 1, batch 1/\d+ \(global 1\), .*; ETA epoch \d+m\d\ds, run \d+m\d\ds", out.stderr)
    ckpt = load_file(tiny_recipe.workdir / "exp_ddp/checkpoint-2.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"])  # stored without DDP's prefix
