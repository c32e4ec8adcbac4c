"""One writer at a time: an advisory lock beside a folder that is rewritten by swapping versions.

`writer_lock(folder)` holds `fcntl.flock` on `.NAME.lock` beside the folder (not inside it:
the folder itself is replaced on every write) across read -> build -> swap, so a second
writer waits for the first and then builds on its result instead of overwriting it. The
lock file names its holder (PID, host, start time) for the message a waiting writer prints.
The kernel drops the lock when its holder dies, so a killed writer never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from diffgap_search.errors import DiffgapError

DEFAULT_WAIT_S = 300.0


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"PID {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def writer_lock(folder: str | Path, wait_s: float | None = None, log=lambda line: print(line, file=sys.stderr)):
    """Hold the folder's writer lock; wait up to `wait_s` seconds (default DEFAULT_WAIT_S) for another writer."""
    wait_s = DEFAULT_WAIT_S if wait_s is None else wait_s
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, told = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DiffgapError(f"{folder} is being written by {_holder(fd)}; waited {wait_s:g} s: retry when it "
                                       "has finished, or wait longer with --wait SECONDS") from None
                if not told:
                    log(f"waiting for {folder}: it is being written by {_holder(fd)} (up to {wait_s:g} s)")
                    told = True
                time.sleep(0.05)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
