"""Files and folders that appear whole or not at all.

A file is written to a temporary sibling, fsynced and renamed into place (`write_file_atomic`,
the one helper every writer of the package uses).

A folder (an index, a translator checkpoint) is written into a scratch sibling
`.NAME.building-PID` and swapped into place with one renameat2(RENAME_EXCHANGE)
on Linux; elsewhere with two renames, and a crash between them is repaired by
`restore_interrupted_swap` at the next load. Scratch folders of dead processes are
removed the next time one is made.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from pathlib import Path

from diffgap_search.errors import DiffgapError


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    return renameat2(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)), RENAME_EXCHANGE) == 0


def replace_dir(new: Path, dst: Path) -> None:
    """Put the finished folder `new` at `dst`, atomically where the OS allows."""
    _fsync_dir(new)
    if not dst.exists():
        os.rename(new, dst)
    elif _exchange(new, dst):
        shutil.rmtree(new)  # `new` now holds the previous version
    else:  # two renames: a crash between them leaves `.old-*` beside dst (restored on load)
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.rename(dst, old)
        os.rename(new, dst)
        shutil.rmtree(old)
    _fsync_dir(dst.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scratch_dir(dst: Path, subdirs: tuple[str, ...] = ()) -> Path:
    """A fresh temporary sibling of `dst`; removes ones left by killed processes."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for stale in dst.parent.glob(f".{dst.name}.building-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = dst.parent / f".{dst.name}.building-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for sub in subdirs:
        (tmp / sub).mkdir(parents=True)
    return tmp


def restore_interrupted_swap(root: Path) -> None:
    """Without renameat2, a crash between two renames leaves only `.NAME.old-PID`."""
    if root.exists():
        return
    olds = sorted(root.parent.glob(f".{root.name}.old-*"))
    if olds:
        os.rename(olds[-1], root)


# ---------------------------------------------------------------------------
# files: every atomic write of the package goes through write_file_atomic
# ---------------------------------------------------------------------------


def _mkstemp(path: Path) -> tuple[int, str]:
    """A temporary file beside `path`, with the permissions a plain open() would give."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def write_file_atomic(path: str | Path, write, mode: str = "wb", **open_kwargs) -> Path:
    """write(fh) into a temporary file beside `path`, fsync, rename into place.

    A crash at any point leaves the old file or the new one, never half of one, and
    an exception leaves no temporary file behind.
    """
    path = Path(path)
    fd, tmp = _mkstemp(path)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(obj: dict, path: str | Path) -> Path:
    return write_file_atomic(path, lambda fh: fh.write(json.dumps(obj, indent=2, sort_keys=False) + "\n"), "w")


def read_json(path: str | Path, fix: str):
    """The JSON value in `path`, or one DiffgapError line naming the file and `fix` (e.g. "rebuild the index")."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiffgapError(f"{path}: not readable JSON ({str(exc).splitlines()[0][:160]}); {fix}") from None
