"""Atomic file writes: a temporary file in the target's folder, flushed to disk, then renamed over the
target, so that an interruption (Ctrl-C, a crash, a full disk) never leaves a half-written file and never
damages the previous version. Files and folders get the usual permissions (0666 / 0777 less the umask),
not the 0600 / 0700 of ``tempfile``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import DamagedFileError, DiskFullError, UserError

__all__ = [
    "umask", "check_writable", "atomic_write", "atomic_write_bytes", "atomic_write_text", "temporary_file",
    "make_staging_dir", "FolderLock", "writable_target", "remove_temporary_files", "DIGEST_FIELD", "with_digest",
    "checked_digest",
]  # fmt: skip

DIGEST_FIELD = "sha256"  # a JSON file's own checksum: SHA-256 of the canonical JSON of its other fields


def _json_digest(obj: dict[str, Any]) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def with_digest(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with :data:`DIGEST_FIELD` added, so that a reader can tell a damaged file (:func:`checked_digest`)."""
    rest = {k: v for k, v in obj.items() if k != DIGEST_FIELD}
    return {**rest, DIGEST_FIELD: _json_digest(rest)}


def checked_digest(obj: Any, path: str | os.PathLike) -> Any:
    """``obj`` (a parsed JSON file) without its :data:`DIGEST_FIELD`, which must match its other fields;
    files written without one (older versions, other tools) pass unchecked. Raises DamagedFileError."""
    if not isinstance(obj, dict) or DIGEST_FIELD not in obj:
        return obj
    rest = {k: v for k, v in obj.items() if k != DIGEST_FIELD}
    if obj[DIGEST_FIELD] != _json_digest(rest):
        raise DamagedFileError(
            f"{path} is damaged: its contents do not match the SHA-256 recorded in it when it was written; "
            "restore it from a copy or export the model again"
        )
    return rest


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


def writable_target(path: str | os.PathLike) -> Path:
    """The file that writing ``path`` replaces: a symbolic link's target (the link stays a link); a path
    that exists but is not a regular file (a device such as /dev/null, a folder, a pipe) is refused, since
    the rename would put a file in its place."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():
        raise UserError(
            f"{path} exists and is not a regular file (a device, a folder, a pipe): writing it would put a file "
            "in its place; choose another path"
        )
    return path


def remove_temporary_files(folder: Path) -> list[str]:
    """Remove the temporary files of unfinished writes (``.*.tmp``, see :func:`temporary_file`) in
    ``folder``, which no other process may be writing (hold its :class:`FolderLock`); their names."""
    removed = []
    for tmp in sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []:
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    return removed


def check_writable(path: Path) -> None:
    """Raise the OSError that writing ``path`` would raise (its folder is created), before long work."""
    try:
        path = writable_target(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.unlink(temporary_file(path))
    except OSError as exc:
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:  # a file where a folder of the path should be: name that file
            raise OSError(errno.ENOTDIR, "Not a directory", str(blocker)) from exc
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
    path = writable_target(path)
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


_HELD_LOCKS: set[int] = set()  # file descriptors of the FolderLocks this process holds


def _drop_inherited_locks() -> None:
    # A forked child (a DataLoader worker) shares the parent's lock; if the parent is killed, the child
    # would keep the folder locked until it exits too. The child closes its copies (the parent's stay).
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


class FolderLock:
    """Exclusive use of a folder by one process: ``with FolderLock(folder, "run folder"):``.

    A second attngan process that wants to write into the same folder (a run resumed twice, two ``sample``
    commands with one ``--out``) is refused with a UserError instead of mixing its files with the first's.
    The lock is ``fcntl.flock`` on ``folder/.attngan.lock``: the system releases it when the process ends,
    however it ends, so no stale lock is ever left (forked children, such as DataLoader workers, drop their
    copy at once). The file is removed on release, and the folder too if
    the lock created it and nothing else was written. Where ``fcntl`` is missing (Windows) it does nothing.
    """

    NAME = ".attngan.lock"

    def __init__(self, folder: str | os.PathLike, what: str = "folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:
            return self
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / self.NAME, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            holder = os.read(fd, 64).decode("ascii", "replace").strip()
            os.close(fd)
            raise UserError(
                f"another attngan process{f' (pid {holder})' if holder.isdigit() else ''} is writing to the "
                f"{self.what} {self.folder}; wait for it to end, or choose another {self.what}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _HELD_LOCKS.add(fd)
        return self

    def is_empty(self) -> bool:
        """Whether the folder holds nothing but the lock file."""
        return all(p.name == self.NAME for p in self.folder.iterdir())

    def remove_temporaries(self) -> list[str]:
        """Remove the temporary files that a killed writer left in the folder; safe only while this lock
        is held (see :func:`remove_temporary_files`)."""
        return remove_temporary_files(self.folder)

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self.folder / self.NAME).unlink()
        _HELD_LOCKS.discard(self._fd)
        os.close(self._fd)  # closing releases the lock
        self._fd = None
        if self._created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only if empty
