"""Atomic file writes: a temporary file in the target's folder, flushed to disk, then renamed over the
target, so that an interruption (Ctrl-C, a crash, a full disk) never leaves a half-written file and never
damages the previous version. Files and folders get the usual permissions (0666 / 0777 less the umask),
not the 0600 / 0700 of ``tempfile``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import DiskFullError

__all__ = ["umask", "check_writable", "atomic_write", "atomic_write_bytes", "atomic_write_text", "temporary_file", "make_staging_dir"]


def umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back
    os.umask(mask)
    return mask


def temporary_file(path: Path, suffix: str = ".tmp") -> str:
    """Create an empty temporary file beside ``path`` with the permissions a new ``path`` would get."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o666 & ~umask())
    return tmp


def check_writable(path: Path) -> None:
    """Raise the OSError that writing ``path`` would raise (its folder is created), before long work."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.unlink(temporary_file(path))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def make_staging_dir(parent: Path, prefix: str) -> Path:
    """A new temporary folder in ``parent`` with the permissions of a new folder (moved into place later)."""
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    with contextlib.suppress(OSError):
        os.chmod(staging, 0o777 & ~umask())
    return staging


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb", **open_kwargs: Any) -> Path:
    """Call ``write(f)`` on a temporary file opened with ``mode``, fsync it, and rename it to ``path``.

    Raises :class:`~attngan.errors.DiskFullError` when the disk fills up; any other error propagates.
    In every case the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_file(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"no space left on the device while writing {path}; the previous file (if any) is intact. "
                "Free some disk space or choose another output folder.",
                path,
            ) from exc
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, newlines as given."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
