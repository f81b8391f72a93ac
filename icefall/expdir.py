"""Who owns an experiment folder: the lock of the running training, and
moving aside what an abandoned run wrote after the point a new run resumes from."""

import logging
import math
import os
import re
from datetime import datetime
from pathlib import Path
from typing import List, Optional

from icefall.fsutil import pid_alive


class ExpDirInUse(RuntimeError):
    """Another live training holds the folder's lock."""


class ExpDirLock:
    """``<exp-dir>/.lock`` holding the pid of the run that owns the folder.

    A lock whose pid is no longer alive (a killed run) is taken over with a
    warning; a live one is refused with :class:`ExpDirInUse`.
    """

    def __init__(self, exp_dir: Path):
        self.path = Path(exp_dir) / ".lock"
        self.held = False

    def acquire(self) -> "ExpDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _read_pid(self.path)
                if pid is not None and pid != os.getpid() and pid_alive(pid):
                    raise ExpDirInUse(
                        f"--exp-dir {self.path.parent}: another training (pid {pid}) is using it; "
                        f"wait for it, stop it, or choose another --exp-dir"
                    ) from None
                logging.warning(f"{self.path}: taking over the stale lock of pid {pid} (no longer running)")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return self
        raise ExpDirInUse(f"{self.path}: could not take the lock (another run keeps taking it)")

    def release(self) -> None:
        if self.held and _read_pid(self.path) == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


def _saved_batch(filename: Path) -> float:
    """``batch_idx_train`` of a checkpoint (inf when it cannot be read)."""
    import torch

    try:
        return float(torch.load(filename, map_location="cpu", weights_only=True, mmap=True)["batch_idx_train"])
    except Exception:
        return math.inf


def _read_pid(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def move_abandoned(exp_dir: Path, batch_idx_train: int, epoch: int) -> List[Path]:
    """Move what a previous run wrote after the resume point into
    ``abandoned-<time>/``: ``checkpoint-N.pt`` with N > ``batch_idx_train``,
    ``epoch-M.pt`` with M >= ``epoch`` (the first epoch this run trains) and
    ``best-*.pt`` saved after ``batch_idx_train``. Returns the moved files."""
    from icefall.checkpoint import find_checkpoints

    exp_dir = Path(exp_dir)
    moved = [p for p in find_checkpoints(exp_dir) if int(p.stem.split("-")[1]) > batch_idx_train]
    for p in exp_dir.glob("epoch-*.pt"):
        m = re.fullmatch(r"epoch-(\d+)\.pt", p.name)
        if m and int(m[1]) >= epoch:
            moved.append(p)
    for p in exp_dir.glob("best-*-loss.pt"):
        if _saved_batch(p) > batch_idx_train:
            moved.append(p)
    if not moved:
        return []
    dest = exp_dir / f"abandoned-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(exist_ok=True)
    for p in moved:
        os.replace(p, dest / p.name)
    logging.warning(
        f"moved {len(moved)} file(s) of an earlier run written after this run's start "
        f"(global batch {batch_idx_train}) into {dest}: {', '.join(sorted(p.name for p in moved))}"
    )
    return moved
