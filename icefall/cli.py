"""What every decoding/export script shares: one-line errors and --help.

    def main(argv=None) -> int: ...
    if __name__ == "__main__":
        sys.exit(run_main(main))

:func:`run_main` turns the errors a user can fix (a missing or corrupt
checkpoint, a bad tokens file or audio file, a wrong flag, a full disk)
into ``error: <one line naming the file or flag>`` and exit code 2, instead
of a traceback. Only the standard library is imported here.
"""

import argparse
import errno
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

PathLike = Union[str, Path]


class UserError(Exception):
    """A mistake the user can fix; the message names the file or flag."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the module docstring's layout and shows every flag's default."""


def make_parser(description: Optional[str]) -> argparse.ArgumentParser:
    """An ArgumentParser whose --help shows the docstring as written and the defaults."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_main(main: Callable[[Optional[List[str]]], int], argv: Optional[List[str]] = None) -> int:
    """Run a script's ``main(argv)``; user errors print one line and give 2,
    Ctrl-C gives 130. Anything else (a bug) keeps its traceback."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except UserError as e:  # CheckpointError, TokenFileError, AudioFileError, ...
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # e.g. a manifest named in the message
        print(f"error: {_one_line(e) if e.errno is None else f'{e.filename}: {e.strerror}'}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permission denied, ... : name the file
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.ENOENT,
                       errno.EISDIR, errno.ENOTDIR):
            where = f"{e.filename}: " if e.filename else ""
            print(f"error: {where}{e.strerror or _one_line(e)}", file=sys.stderr)
            return 2
        raise


def check_inputs_exist(script: PathLike, paths: Dict[str, Optional[PathLike]]) -> None:
    """Raise :class:`UserError` for the first of ``{flag: path}`` that does
    not exist; for a relative path that is not found, say which folder the
    recipe's commands run from (the one holding the script's folder)."""
    for flag, path in paths.items():
        if path is None or Path(path).exists():
            continue
        msg = f"{flag} {path}: not found"
        if not Path(path).is_absolute():
            recipe_root = Path(script).absolute().parent.parent
            if Path.cwd().resolve() != recipe_root.resolve():
                msg += (f" (relative to {Path.cwd()}); run the recipe's commands from {recipe_root}, "
                        f"or give {flag} explicitly")
        raise UserError(msg)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default None: cuda if available); see :func:`device_from_flag`."""
    parser.add_argument("--device", type=str, default=None, help="cpu or cuda (None: cuda if available)")


def device_from_flag(device: Optional[str]):
    """The torch.device --device names; None: cuda if available, else cpu."""
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
