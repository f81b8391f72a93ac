"""Small utilities shared by every recipe: flags, logging, metrics, env info, random states."""

import argparse
import logging
import platform
import subprocess
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

PathLike = Union[str, Path]


class AttributeDict(dict):
    """A dict whose keys are also attributes: ``params.exp_dir``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no attribute '{key}'") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError:
            raise AttributeError(f"no attribute '{key}'") from None


def str2bool(v: Union[str, bool]) -> bool:
    """An argparse type accepting true/false, yes/no, 1/0 (any case)."""
    if isinstance(v, bool):
        return v
    s = v.strip().lower()
    if s in ("yes", "true", "t", "y", "1"):
        return True
    if s in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {v!r}")


def get_rank_and_world_size() -> "tuple[int, int]":
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def log_timestamp() -> str:
    """This moment as the date part of a log file's name: 2026-12-02-07-43-20."""
    return datetime.now().strftime("%Y-%m-%d-%H-%M-%S")


def setup_logger(
    log_filename: PathLike, log_level: str = "info", use_console: bool = True, console_level: str = "warning",
    now: Optional[str] = None,
) -> Path:
    """Log to ``<log_filename>-<date>[-<rank>]`` and to the console.

    In a multi-process job each rank writes its own file and its lines are
    prefixed with the rank. With ``use_console=False`` (e.g. DDP ranks other
    than 0) only messages at ``console_level`` or above reach the console.
    ``now``: the date part of the name (default: this moment), which the
    launcher of a multi-process job picks once so that every rank's file
    carries the same one.
    Returns the path of the log file.
    """
    now = now or log_timestamp()
    rank, world_size = get_rank_and_world_size()
    if world_size > 1:
        path = Path(f"{log_filename}-{now}-{rank}")
        fmt = f"%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] ({rank}/{world_size}) %(message)s"
    else:
        path = Path(f"{log_filename}-{now}")
        fmt = "%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s"
    path.parent.mkdir(parents=True, exist_ok=True)
    level = getattr(logging, log_level.upper())
    handlers: list = [logging.FileHandler(path, mode="w")]
    console = logging.StreamHandler()
    if not use_console:
        console.setLevel(getattr(logging, console_level.upper()))
    handlers.append(console)
    logging.basicConfig(level=level, format=fmt, handlers=handlers, force=True)
    return path


class MetricsTracker(defaultdict):
    """Sums of losses and counts over batches; ``frames`` normalises them.

    ``tracker["frames"] = num_frames; tracker["loss"] = loss_sum``; trackers
    add up with ``+`` and decay with ``*`` (icefall's running averages).
    """

    def __init__(self) -> None:
        super().__init__(int)

    def __add__(self, other: "MetricsTracker") -> "MetricsTracker":
        out = MetricsTracker()
        for k in list(self) + [k for k in other if k not in self]:  # keeps the order of the keys
            out[k] = self.get(k, 0) + other.get(k, 0)
        return out

    def __mul__(self, alpha: float) -> "MetricsTracker":
        out = MetricsTracker()
        for k, v in self.items():
            out[k] = v * alpha
        return out

    def norm_items(self) -> Dict[str, float]:
        """Each value divided by the number of frames (``frames`` itself excluded)."""
        frames = self.get("frames", 0) or 1
        return {k: float(v) / frames for k, v in self.items() if k != "frames"}

    def __str__(self) -> str:
        items = ", ".join(f"{k}={v:.4g}" for k, v in self.norm_items().items())
        return f"[{items}] over {float(self.get('frames', 0)):.2f} frames"

    def reduce(self, device: Union[str, torch.device]) -> None:
        """Sum every value over all ranks (in place); a no-op in one process."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        keys = sorted(self)
        t = torch.tensor([float(self[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        for k, v in zip(keys, t.tolist()):
            self[k] = v

    def write_summary(self, tb_writer, prefix: str, batch_idx: int) -> None:
        for k, v in self.norm_items().items():
            tb_writer.add_scalar(prefix + k, v, batch_idx)


def get_git_sha1(repo_dir: Optional[PathLike] = None) -> str:
    repo_dir = repo_dir or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo_dir), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5,
        )
        sha = out.stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(repo_dir), "diff", "--quiet"], capture_output=True, timeout=5
        ).returncode
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def get_env_info() -> Dict[str, Any]:
    """Versions and the git commit; deliberately nothing that identifies the host."""
    from icefall import __version__

    info: Dict[str, Any] = {
        "icefall-version": __version__,
        "icefall-git-sha1": get_git_sha1(),
        "torch-version": str(torch.__version__),
        "torch-cuda-available": torch.cuda.is_available(),
        "torch-cuda-version": torch.version.cuda,
        "python-version": platform.python_version(),
        "os": platform.system(),
    }
    try:
        import lhotse

        info["lhotse-version"] = lhotse.__version__
    except ImportError:
        pass
    return info


def make_pad_mask(lengths: torch.Tensor, max_len: int = 0) -> torch.Tensor:
    """``[B]`` lengths -> ``[B, T]`` bool mask, True at padded positions."""
    max_len = max(max_len, int(lengths.max()) if lengths.numel() else 0)
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]



def get_rng_state() -> Dict[str, Any]:
    """Every random state a resumed run needs to draw the same numbers (plain tensors/tuples)."""
    import random

    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fix_random_seed(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
