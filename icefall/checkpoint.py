"""Saving, loading and averaging checkpoints.

A training checkpoint is a plain dict (so ``torch.load(..., weights_only=True)``
can read it)::

    {
      "model": state_dict, "model_avg": state_dict (float64) or absent,
      "optimizer": ..., "scheduler": ..., "grad_scaler": ..., "sampler": ...,
      "config": {...model sizes...},
      # plus the training info: epoch, batch_idx_train, best_train_loss, ...
    }

An exported model is ``{"model": state_dict, "config": {...}}``.

Files are written atomically: a crash while saving leaves the previous file
as it was. Loading (:func:`load_file`) checks the zip CRCs, accepts icefall's
own training checkpoints (``PosixPath`` values, ``AttributeDict``) and refuses
any other object; every failure is a one-line :class:`CheckpointError`
naming the file.
"""

import os
import pickle
import re
import shutil
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PosixPath
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Union

import torch
from torch import nn

from icefall.cli import UserError
from icefall.fsutil import describe_non_file, pid_alive

PathLike = Union[str, Path]

# Keys that would identify the machine a model was trained on. icefall's
# checkpoints store them inside "env_info"; ours never do.
_HOST_KEYS = re.compile(r"host|ip[_ ]?addr|ip$", re.IGNORECASE)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, truncated or not what was asked for."""


# ----------------------------------------------------------------------- I/O


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Our temporary files: ".<name>.<pid>-<random>.tmp" beside the target.
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[a-z0-9_]{8}\.tmp$")


def remove_stale_temp_files(folder: PathLike) -> List[Path]:
    """Delete the temporary files that a killed save left in ``folder``:
    only names of our own pattern, and only of processes no longer running
    (a save going on in another process is left alone). Returns them."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        m = _TMP_NAME.match(p.name)
        if m and int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class _RecordingWriter:
    """A file wrapper that remembers the first exception its ``write`` raised,
    so that the original cause (ENOSPC, Ctrl-C) can be re-raised instead of
    the RuntimeError that torch.save turns it into."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.error: Optional[BaseException] = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except BaseException as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self._f.flush()

    def fileno(self) -> int:
        return self._f.fileno()


@contextmanager
def _atomic_write(filename: PathLike) -> Iterator[BinaryIO]:
    """Write through a temporary file in the same folder, fsync and rename, so
    that ``filename`` is always either the old or the new file, whole.

    Leftover temporary files of killed saves are removed first. When the
    write fails (e.g. disk full) or is interrupted (Ctrl-C), the temporary
    file is removed and the original cause is raised: an ``OSError`` naming
    ``filename``, or the ``KeyboardInterrupt`` itself.
    """
    filename = Path(filename)
    filename.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(filename.parent)
    fd, tmp = tempfile.mkstemp(dir=filename.parent, prefix=f".{filename.name}.{os.getpid()}-", suffix=".tmp")
    writer = None
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _RecordingWriter(f)
            yield writer
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the mode open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, filename)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = writer.error if writer is not None and writer.error is not None else e
        if isinstance(cause, OSError):
            raise OSError(cause.errno, f"cannot write {filename}: {cause.strerror or cause}") from None
        if cause is not e:
            raise cause from None
        raise
    # Make the rename itself durable.
    dir_fd = os.open(filename.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, filename: PathLike) -> None:
    """``torch.save`` that a crash cannot leave half-written."""
    with _atomic_write(filename) as f:
        torch.save(obj, f)


def atomic_copy(src: PathLike, dst: PathLike) -> None:
    """Copy a checkpoint so that ``dst`` is either the old or the new file."""
    with _atomic_write(dst) as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out)


# icefall's own training checkpoints hold these besides plain types: the
# params (exp_dir, lang_dir, ...) as pathlib.PosixPath, and sometimes
# icefall.utils.AttributeDict. weights_only=True refuses both. A PosixPath
# is harmless to build from strings. torch's unpickler only fills exact
# dicts, so AttributeDict is read as a plain dict: the class registered
# under its name builds an empty dict.


class _AttributeDictAsDict:
    """Stands in for ``icefall.utils.AttributeDict`` while unpickling: makes a plain dict."""

    def __new__(cls, *args) -> dict:
        return dict()


_SAFE_GLOBALS = [PosixPath, (_AttributeDictAsDict, "icefall.utils.AttributeDict")]


def verify_zip_crc(filename: PathLike) -> None:
    """Check every member of a torch zip file against its stored CRC-32.

    ``torch.load`` does not, so a flipped bit in a tensor loads silently.
    Reads the file once in 1 MiB pieces (about 0.1 s for 300 MB when cached).
    Raises :class:`CheckpointError` naming the file and the damaged member.
    """
    path = Path(filename)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt file (its zip structure is damaged: {e})") from None
    if bad is not None:
        raise CheckpointError(
            f"{path}: corrupt file (CRC check failed for {bad}; a damaged copy? copy it again)"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _torch_load(path: Path, map_location, mmap: bool = False) -> Any:
    with torch.serialization.safe_globals(_SAFE_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def _refused_global(e: BaseException) -> str:
    """The global that weights_only refused, from torch's message, or ''."""
    m = re.search(r"GLOBAL ([\w.]+)", str(e))
    return m.group(1) if m else ""


def load_file(filename: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Read a checkpoint or exported model with ``weights_only=True``.

    The zip CRCs are checked first (:func:`verify_zip_crc`). Besides plain
    types, icefall's own training checkpoints load (their ``PosixPath``
    values and ``AttributeDict``); any other object is refused.

    Raises :class:`CheckpointError` with a one-line message naming the file
    when it is missing, not a regular file, truncated, corrupt, holds
    unsafe objects or is not a checkpoint.
    """
    path = Path(filename)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: is {describe_non_file(path)}, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (0 bytes)")
    if zipfile.is_zipfile(path):
        verify_zip_crc(path)
    try:
        obj = _torch_load(path, map_location)
    except pickle.UnpicklingError as e:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?)") from None
        what = _refused_global(e) or _first_line(e).split("error:")[-1].strip()
        raise CheckpointError(
            f"{path}: holds objects that weights_only=True refuses ({what}); "
            "only tensors, plain containers, numbers, strings and paths are loaded"
        ) from None
    except Exception as e:  # RuntimeError, EOFError, BadZipFile, OSError, ValueError, ...
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {_first_line(e)}"
        ) from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path}: has no 'model' entry; is it a checkpoint of this toolkit?")
    return obj


def read_config(filename: PathLike) -> Optional[Dict[str, Any]]:
    """The model config stored in a checkpoint or export, or None (e.g. for
    icefall's own files, which carry none). Reads lazily (mmap) and does not
    check CRCs: load the weights with :func:`load_file`, which does."""
    path = Path(filename)
    try:
        obj = _torch_load(path, "cpu", mmap=True)
    except Exception:
        load_file(path)  # raises the one-line error that names the problem
        raise
    config = obj.get("config") if isinstance(obj, dict) else None
    return dict(config) if config is not None else None


def _plain(obj: Any) -> Any:
    """Turn dict subclasses (e.g. AttributeDict) and Paths into plain types so
    the file loads with ``weights_only=True``."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, (Path, str)) and type(obj) is not str:  # e.g. torch.__version__
        return str(obj)
    return obj


def _check_no_host_identity(info: Dict[str, Any], where: str = "") -> None:
    for k, v in info.items():
        if _HOST_KEYS.search(str(k)):
            raise ValueError(f"refusing to store {where}{k!r} in a checkpoint: it identifies the host")
        if isinstance(v, dict):
            _check_no_host_identity(v, where=f"{where}{k}.")


def strip_ddp_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix that DistributedDataParallel adds."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _training_state(optimizer, scheduler, scaler, sampler) -> List[tuple]:
    """The (checkpoint key, object) pairs of the training state that is given."""
    pairs = (("optimizer", optimizer), ("scheduler", scheduler), ("grad_scaler", scaler), ("sampler", sampler))
    return [(key, obj) for key, obj in pairs if obj is not None]


def save_checkpoint(
    filename: PathLike,
    model: nn.Module,
    params: Optional[Dict[str, Any]] = None,
    model_avg: Optional[nn.Module] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    sampler: Optional[Any] = None,
    config: Optional[Dict[str, Any]] = None,
    rank: int = 0,
) -> None:
    """Save everything needed to resume training, atomically.

    Args:
      filename: e.g. ``exp/epoch-3.pt`` or ``exp/checkpoint-8000.pt``.
      model: the model (DDP-wrapped or not; the prefix is not stored).
      params: training info (epoch, batch_idx_train, best losses, ...),
        stored at the top level of the file. Must not contain host names.
      model_avg: the running-average model (kept in float64).
      optimizer, scheduler, scaler, sampler: anything with ``state_dict()``.
      config: the model's architecture (sizes), so it can be rebuilt without flags.
      rank: only rank 0 writes.
    """
    if rank != 0:
        return
    checkpoint: Dict[str, Any] = {"model": _unwrap(model).state_dict()}
    if model_avg is not None:
        checkpoint["model_avg"] = model_avg.to(torch.float64).state_dict()
    for key, obj in _training_state(optimizer, scheduler, scaler, sampler):
        checkpoint[key] = obj.state_dict()
    if config is not None:
        checkpoint["config"] = dict(config)
    if params:
        reserved = set(checkpoint) & set(params)
        if reserved:
            raise ValueError(f"params may not use the reserved keys {sorted(reserved)}")
        checkpoint.update(params)
    checkpoint = _plain(checkpoint)
    _check_no_host_identity({k: v for k, v in checkpoint.items() if k not in ("model", "model_avg")})
    atomic_save(checkpoint, filename)


def state_dict_mismatch(
    expected: Dict[str, Any], given: Dict[str, torch.Tensor], limit: int = 3
) -> str:
    """Describe how ``given`` differs from ``expected`` (name -> tensor or
    shape), in one line: the first missing, unexpected and mismatched keys
    (with shapes). Returns '' when they fit."""

    def shape(v: Any) -> tuple:
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [
        f"{k} {list(shape(given[k]))} (model: {list(shape(expected[k]))})"
        for k in expected
        if k in given and shape(given[k]) != shape(expected[k])
    ]
    parts = []
    for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
        if keys:
            more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
            parts.append(f"{len(keys)} {name}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts)


def load_state_dict_strict(model: nn.Module, state_dict: Dict[str, torch.Tensor], filename: PathLike) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with a one-line
    :class:`CheckpointError` naming the file and the first differing keys."""
    problem = state_dict_mismatch(model.state_dict(), state_dict)
    if problem:
        raise CheckpointError(f"{filename}: does not fit the model: {problem}")
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(
    filename: PathLike,
    model: nn.Module,
    model_avg: Optional[nn.Module] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    sampler: Optional[Any] = None,
    strict: bool = True,
) -> Dict[str, Any]:
    """Restore each part that is given; return the whole checkpoint dict
    (so the caller can read the training info)."""
    checkpoint = load_file(filename)
    state_dict = strip_ddp_prefix(checkpoint["model"])
    if strict:
        load_state_dict_strict(_unwrap(model), state_dict, filename)
    else:
        _unwrap(model).load_state_dict(state_dict, strict=False)
    if model_avg is not None:
        if "model_avg" not in checkpoint:
            raise CheckpointError(f"{filename}: has no 'model_avg' to restore")
        model_avg.load_state_dict(checkpoint["model_avg"], strict=strict)
    for key, obj in _training_state(optimizer, scheduler, scaler, sampler):
        if key not in checkpoint:
            raise CheckpointError(f"{filename}: has no '{key}' to restore")
        obj.load_state_dict(checkpoint[key])
    return checkpoint


# ---------------------------------------------------------- batch checkpoints


_BATCH_CKPT = re.compile(r"^checkpoint-(\d+)\.pt$")


def find_checkpoints(exp_dir: PathLike, iteration: int = 0) -> List[Path]:
    """``checkpoint-<batch>.pt`` files, newest (largest batch) first.

    ``iteration > 0`` keeps those at or after that batch; ``iteration < 0``
    keeps those at or before ``-iteration`` (icefall's convention).
    """
    found = []
    for p in Path(exp_dir).glob("checkpoint-*.pt"):
        m = _BATCH_CKPT.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    found.sort(reverse=True)
    if iteration > 0:
        found = [(i, p) for i, p in found if i >= iteration]
    elif iteration < 0:
        found = [(i, p) for i, p in found if i <= -iteration]
    return [p for _, p in found]


def remove_checkpoints(exp_dir: PathLike, keep_last_k: int, rank: int = 0) -> List[Path]:
    """Delete all but the newest ``keep_last_k`` batch checkpoints; return the deleted."""
    if rank != 0 or keep_last_k <= 0:
        return []
    stale = find_checkpoints(exp_dir)[keep_last_k:]
    for p in stale:
        p.unlink()
    return stale


# ----------------------------------------------------------------- averaging


def average_checkpoints(
    filenames: List[PathLike], key: str = "model", device: str = "cpu"
) -> Dict[str, torch.Tensor]:
    """The element-wise mean of the ``key`` state dicts of several files.

    Floating tensors are summed in float64 and cast back to their dtype;
    integer buffers (e.g. counters) are copied from the last file, since an
    average of them has no meaning.
    """
    if not filenames:
        raise CheckpointError("average_checkpoints: the list of files to average is empty")
    n = len(filenames)
    total: Dict[str, torch.Tensor] = {}
    dtypes: Dict[str, torch.dtype] = {}
    for i, f in enumerate(filenames):
        state = strip_ddp_prefix(load_file(f, map_location=device)[key])
        if i > 0 and state.keys() != total.keys():
            raise CheckpointError(f"{f}: its parameters differ from those of {filenames[0]}")
        for k, v in state.items():
            if v.is_floating_point():
                dtypes.setdefault(k, v.dtype)
                total[k] = total[k] + v.to(torch.float64) if k in total else v.to(torch.float64)
            else:
                total[k] = v.clone()
    return {k: (v / n).to(dtypes[k]) if k in dtypes else v for k, v in total.items()}


def update_averaged_model(
    average_period: int, batch_idx_train: int, model_cur: nn.Module, model_avg: nn.Module
) -> None:
    """Update the running average, called every ``average_period`` batches:

        model_avg = model_avg * (1 - p/b) + model_cur * (p/b)

    with p = average_period and b = batch_idx_train, so ``model_avg`` is the
    mean of the snapshots taken at batches p, 2p, ..., b.
    """
    weight_cur = average_period / batch_idx_train
    cur = _unwrap(model_cur).state_dict()
    with torch.no_grad():
        for k, v in model_avg.state_dict().items():
            if v.is_floating_point():
                v.mul_(1 - weight_cur).add_(cur[k].to(v.dtype), alpha=weight_cur)
            else:
                v.copy_(cur[k])


def average_checkpoints_with_averaged_model(
    filename_start: PathLike, filename_end: PathLike, device: str = "cpu"
) -> Dict[str, torch.Tensor]:
    """The mean model over the batches between two checkpoints:

        (avg_end * b_end - avg_start * b_start) / (b_end - b_start)

    where ``avg_*`` is the running average stored in each file and ``b_*`` its
    batch index rounded down to a multiple of ``average_period``.
    """
    start = load_file(filename_start, map_location=device)
    end = load_file(filename_end, map_location=device)
    for f, ckpt in ((filename_start, start), (filename_end, end)):
        if "model_avg" not in ckpt or "average_period" not in ckpt:
            raise CheckpointError(
                f"{f}: has no averaged model (an exported file?); use --use-averaged-model False"
            )
    period = end["average_period"]
    b_start = start["batch_idx_train"] // period * period
    b_end = end["batch_idx_train"] // period * period
    if b_end <= b_start:
        raise CheckpointError(
            f"{filename_end}: batch {end['batch_idx_train']} is not after {filename_start}'s "
            f"{start['batch_idx_train']}; nothing to average"
        )
    w_end = b_end / (b_end - b_start)
    w_start = -b_start / (b_end - b_start)
    dtypes = {k: v.dtype for k, v in end["model"].items()}
    out = {}
    for k, v_end in end["model_avg"].items():
        if v_end.is_floating_point():
            v = w_end * v_end.to(torch.float64) + w_start * start["model_avg"][k].to(torch.float64)
            out[k] = v.to(dtypes.get(k, torch.float32))
        else:
            out[k] = v_end.clone()
    return out


# ------------------------------------------------- --epoch/--iter/--avg flags


@dataclass
class CheckpointSelection:
    """Which files ``--epoch/--iter/--avg/--use-averaged-model`` ask for.

    ``mode`` is "single" (one file, its "model"), "average" (mean of the
    "model" of each file) or "averaged_model" (``files = [start, end]``,
    combined with :func:`average_checkpoints_with_averaged_model`).
    """

    mode: str
    files: List[Path]
    flags: str

    def load_state_dict(self, device: str = "cpu") -> Dict[str, torch.Tensor]:
        for f in self.files:
            if not f.exists():
                raise CheckpointError(self._missing(f))
        if self.mode == "single":
            return strip_ddp_prefix(load_file(self.files[0], map_location=device)["model"])
        if self.mode == "average":
            return average_checkpoints(self.files, device=device)
        return average_checkpoints_with_averaged_model(self.files[0], self.files[1], device=device)

    def _missing(self, f: Path) -> str:
        msg = f"{f}: not found (asked for by {self.flags})"
        if self.mode == "averaged_model":
            msg += (
                f"; this mode reads {self.files[0].name} and {self.files[1].name}. "
                "For an exported pretrained.pt (e.g. via an epoch-9999.pt symlink) "
                "use --use-averaged-model False"
            )
        return msg


def select_checkpoints(
    exp_dir: PathLike, epoch: int, iter: int = 0, avg: int = 1, use_averaged_model: bool = False
) -> CheckpointSelection:
    """Turn icefall's checkpoint flags into the list of files to read.

    Raises :class:`CheckpointError` (one line naming the flags) when they
    ask for files that cannot exist or are not there.

    - ``--iter N > 0``: batch checkpoints at or before N, newest first.
    - otherwise ``epoch-*.pt`` files ending at ``--epoch``.
    - ``--use-averaged-model True`` needs one file more than ``--avg``: the
      model is the average between the oldest and the newest of them.
    """
    exp_dir = Path(exp_dir)
    flags = (
        f"--iter {iter}" if iter > 0 else f"--epoch {epoch}"
    ) + f" --avg {avg} --use-averaged-model {use_averaged_model}"
    if avg < 1:
        raise CheckpointError(f"--avg must be at least 1, got {avg}")
    if iter > 0:
        files = find_checkpoints(exp_dir, iteration=-iter)
        needed = avg + 1 if use_averaged_model else avg
        if len(files) < needed:
            raise CheckpointError(
                f"{exp_dir}: found {len(files)} checkpoint-*.pt at or before batch {iter}, "
                f"but {flags} needs {needed}"
            )
        files = files[:needed]
        if use_averaged_model:
            return CheckpointSelection("averaged_model", [files[-1], files[0]], flags)
        return CheckpointSelection("average" if avg > 1 else "single", files, flags)
    if use_averaged_model:
        start = epoch - avg
        if start < 1:
            raise CheckpointError(
                f"{flags}: the averaged model needs epoch {start} to exist; lower --avg "
                "or use --use-averaged-model False"
            )
        files = [exp_dir / f"epoch-{start}.pt", exp_dir / f"epoch-{epoch}.pt"]
        return CheckpointSelection("averaged_model", files, flags)
    files = [exp_dir / f"epoch-{i}.pt" for i in range(max(1, epoch - avg + 1), epoch + 1)]
    return CheckpointSelection("single" if len(files) == 1 else "average", files, flags)


def add_checkpoint_arguments(parser) -> None:
    """icefall's checkpoint-selection flags, shared by decode.py, export.py, export-onnx.py."""
    from icefall.utils import str2bool

    parser.add_argument("--epoch", type=int, default=30, help="the last epoch to use (epoch-N.pt)")
    parser.add_argument("--iter", type=int, default=0, help="if > 0, use checkpoint-N.pt files instead of epochs")
    parser.add_argument("--avg", type=int, default=9, help="number of checkpoints to average")
    parser.add_argument(
        "--use-averaged-model", type=str2bool, default=True,
        help="average with the running-average models of epoch-(N-avg).pt and epoch-N.pt "
        "(or of the batch checkpoints); must be False for an exported pretrained.pt",
    )


def select_checkpoints_from_args(args) -> CheckpointSelection:
    return select_checkpoints(args.exp_dir, args.epoch, args.iter, args.avg, args.use_averaged_model)
