"""The save side of icefall/checkpoint.py: leftovers of killed saves, and the
original cause (disk full, Ctrl-C) instead of torch's inline_container error."""

import errno
import os
import signal
import subprocess
import sys

import pytest
import torch

from icefall import checkpoint
from icefall.checkpoint import atomic_save, remove_stale_temp_files

from recipe_fixture import env


def _temp_files(folder):
    return sorted(p.name for p in folder.glob(".*.tmp"))


def test_a_killed_save_leaves_a_temp_file_that_the_next_save_removes(tmp_path):
    # A process killed (-9) in the middle of a save, as a training can be.
    code = (
        "import sys, time\n"
        "from icefall.checkpoint import _atomic_write\n"
        "with _atomic_write(sys.argv[1]) as f:\n"
        "    f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "epoch-1.pt")], env=env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert len(_temp_files(tmp_path)) == 1  # its save is in progress
    # While it runs, another save in the folder must not touch its file.
    atomic_save({"a": 1}, tmp_path / "other.pt")
    assert len(_temp_files(tmp_path)) == 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (tmp_path / ".notes.tmp").write_text("not ours")  # another program's file: kept
    atomic_save({"a": torch.zeros(3)}, tmp_path / "epoch-2.pt")
    assert _temp_files(tmp_path) == [".notes.tmp"]
    assert not (tmp_path / "epoch-1.pt").exists()
    assert torch.load(tmp_path / "epoch-2.pt", weights_only=True)["a"].shape == (3,)


def test_remove_stale_temp_files_keeps_live_processes_files(tmp_path):
    live = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        (tmp_path / f".a.pt.{live.pid}-abcdefgh.tmp").write_bytes(b"")
        (tmp_path / f".b.pt.{dead.pid}-abcdefgh.tmp").write_bytes(b"")
        removed = remove_stale_temp_files(tmp_path)
        assert [p.name for p in removed] == [f".b.pt.{dead.pid}-abcdefgh.tmp"]
        assert _temp_files(tmp_path) == [f".a.pt.{live.pid}-abcdefgh.tmp"]
    finally:
        live.kill()
        live.wait()


class _FailingFile:
    """A file whose writes fail after ``limit`` bytes with ``exc``."""

    def __init__(self, f, limit, exc):
        self.f, self.limit, self.exc, self.n = f, limit, exc, 0

    def write(self, data):
        self.n += len(data)
        if self.n > self.limit:
            raise self.exc
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_save_raises_the_original_cause_and_keeps_the_old_file(tmp_path, monkeypatch, exc):
    target = tmp_path / "epoch-3.pt"
    atomic_save({"old": torch.ones(2)}, target)
    real_fdopen = os.fdopen
    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: _FailingFile(real_fdopen(fd, mode), 100, exc))
    with pytest.raises(type(exc)) as info:
        atomic_save({"new": torch.zeros(100000)}, target)
    if isinstance(exc, OSError):
        assert info.value.errno == errno.ENOSPC
        message = str(info.value)
        assert str(target) in message and "No space left" in message
        assert "inline_container" not in message and "\n" not in message
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["old"].tolist() == [1.0, 1.0]
    assert _temp_files(tmp_path) == []
