"""Atomic writes: usual permissions, nothing damaged or left behind when the disk fills up."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from attngan.atomic import atomic_write, atomic_write_bytes, make_staging_dir, umask
from attngan.errors import DiskFullError


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_read_without_changing_it(umask_027):
    assert umask() == 0o027
    assert umask() == 0o027


def test_files_and_staging_folders_get_the_usual_permissions(tmp_path, umask_027):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert mode(tmp_path / "a.bin") == 0o640  # 0666 & ~0027, not mkstemp's 0600
    assert mode(make_staging_dir(tmp_path, ".s-")) == 0o750


def test_full_disk_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.pt"
    atomic_write_bytes(path, b"old")

    def fill_up(f):
        f.write(b"new, half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="no space left.*state.pt.*previous file.*intact"):
        atomic_write(path, fill_up)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C: same, and the interrupt goes on
        atomic_write(path, lambda f: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert path.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_folder_lock_refuses_a_second_writer_and_leaves_nothing(tmp_path):
    from attngan.atomic import FolderLock, check_writable
    from attngan.errors import UserError

    folder = tmp_path / "run"
    with FolderLock(folder, "run folder") as lock:
        assert lock.is_empty() and (folder / FolderLock.NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(UserError, match=rf"another attngan process \(pid {os.getpid()}\) is writing to the run folder"):
            FolderLock(folder, "run folder").__enter__()
        (folder / "a.png").write_bytes(b"x")
        assert not lock.is_empty()
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]  # the lock file is gone
    with FolderLock(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()  # a folder that the lock made and nothing used is removed again
    with FolderLock(folder):  # free again
        pass

    # A file where a folder of the path should be is named as such.
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError) as exc:
        check_writable(tmp_path / "afile" / "e.json")
    assert exc.value.filename == str(tmp_path / "afile")


def test_a_forked_child_does_not_keep_the_folder_locked(tmp_path):
    """DataLoader workers are forked: if the trainer is killed (OOM), a worker still running must not hold
    the run folder's lock."""
    from attngan.atomic import FolderLock
    from attngan.errors import UserError

    folder = tmp_path / "run"
    read, write = os.pipe()
    with FolderLock(folder):
        pid = os.fork()
        if pid == 0:  # the child: wait until the parent has let go, then try to take the lock
            os.close(write)
            os.read(read, 1)
            try:
                with FolderLock(folder):
                    os._exit(0)
            except UserError:
                os._exit(1)
        os.close(read)
    # The parent released the lock (as a killed parent would); only the child's inherited copy could hold it.
    os.write(write, b"x")
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_stale_temporary_files_are_removed_under_the_lock(tmp_path):
    from attngan.atomic import FolderLock

    (tmp_path / ".000_0_stage0.png.ab12.tmp").write_bytes(b"half")
    (tmp_path / "keep.png").write_bytes(b"x")
    with FolderLock(tmp_path) as lock:
        assert lock.remove_temporaries() == [".000_0_stage0.png.ab12.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_writing_through_a_link_replaces_its_target_and_a_device_is_refused(tmp_path):
    """evaluate --out link.json --overwrite replaced the link by a file, and --out /dev/full (as root) the
    device by a file: the rename puts a file wherever the path points."""
    from attngan.atomic import check_writable
    from attngan.errors import UserError

    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "target.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and target.read_text() == "new"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path / "real"):
        with pytest.raises(UserError, match="exists and is not a regular file"):
            check_writable(path)
        with pytest.raises(UserError, match="exists and is not a regular file"):
            atomic_write_bytes(path, b"x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
