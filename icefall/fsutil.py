"""Small process and file-system checks shared by the library (no torch)."""

import os
import stat
from pathlib import Path
from typing import Union

PathLike = Union[str, Path]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (someone else's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def describe_non_file(path: PathLike) -> str:
    """'a directory', 'a named pipe (FIFO)', ... for a path that exists but is no regular file."""
    mode = os.stat(path).st_mode
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def megabytes(path: PathLike) -> float:
    """The size of file `path` in MiB (2**20 bytes)."""
    return os.stat(path).st_size / 2**20
