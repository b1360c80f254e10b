"""One process per run directory: a lock next to ``--out``, and cleanup after killed writes.

The lock is a file beside the run directory (``.<name>.edgecompress.lock`` in its parent), so it
survives ``--overwrite`` replacing the directory and never makes an empty ``--out`` look used. It
is held with ``flock`` for the whole run, and records the holder's pid, host and start time for
the message a second process gets. The kernel drops the ``flock`` when the holder dies, however
it dies, so the lock file a SIGKILLed run leaves behind is stale by construction and the next
run takes it over (saying whose it was). On file systems without ``flock`` the recorded pid is
checked instead (a pid that no longer runs on this host is stale).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecompress.errors import RunDirError

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".edgecompress.lock"
#: What :func:`edgecompress.io.atomic_path` names its temp files (``tempfile.mkstemp`` with
#: prefix ``.<stem>.`` and suffix ``.tmp<suffix>``: 8 random characters between them), plus the
#: ``.data`` sidecar an interrupted ONNX export may leave next to one.
_TEMP_RE = re.compile(r"^\..*\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9_]+)?(\.data)?$")


def lock_path(run_dir: str | Path) -> Path:
    """The lock file of ``run_dir``: a hidden file next to it."""
    run_dir = Path(run_dir).resolve()
    return run_dir.parent / f".{run_dir.name}{LOCK_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        holder = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}")


class RunDirLock:
    """Exclusive lock of one run directory (use :func:`run_dir_lock`)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.path = lock_path(self.run_dir)
        self._fd: int | None = None

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirError(f"--out {self.run_dir}: cannot create its lock file {self.path}: "
                              f"{err.strerror or err} (is the location writable?)") from None

    def _refuse(self, holder: dict[str, Any]) -> RunDirError:
        return RunDirError(f"--out {self.run_dir}: in use by another edgecompress run "
                           f"({_describe(holder)}); wait for it to finish or choose another "
                           f"directory (lock file {self.path})")

    def acquire(self) -> None:
        """Take the lock, or raise ``RunDirError`` naming the process that holds it."""
        import fcntl

        for _ in range(50):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise self._refuse(holder) from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise RunDirError(f"--out {self.run_dir}: cannot lock {self.path}: "
                                      f"{err.strerror or err}") from None
                holder = _read_holder(fd)  # no flock here: fall back to the recorded pid
                if (holder.get("host") == socket.gethostname() and holder.get("pid") != os.getpid()
                        and isinstance(holder.get("pid"), int) and _pid_alive(holder["pid"])):
                    os.close(fd)
                    raise self._refuse(holder) from None
            try:  # a holder that released meanwhile unlinked the file: lock the new one instead
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read_holder(fd)
            if previous:
                logger.warning("--out %s: taking over the lock of a run that is no longer "
                               "running (%s)", self.run_dir, _describe(previous))
            me = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_dir": str(self.run_dir)}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(me) + "\n").encode("utf-8"))
            os.fsync(fd)
            self._fd = fd
            return
        raise RunDirError(f"--out {self.run_dir}: could not take the lock {self.path} "
                          "(it keeps changing)")

    def release(self) -> None:
        """Remove the lock file and drop the lock (unlink first, so nobody locks a dead file)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[RunDirLock]:
    """Hold the lock of ``run_dir`` for the block.

    Raises:
        RunDirError: another live process holds it (the message names its pid and host), or the
            lock file cannot be created (e.g. ``--out`` under a read-only location).
    """
    lock = RunDirLock(run_dir)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete the temp files that killed atomic writes left in ``run_dir``; returns them.

    Only names :func:`edgecompress.io.atomic_path` creates are touched, and only while the
    caller holds the run directory's lock (no live write of this run can be in flight).
    """
    removed = []
    for folder, _, files in os.walk(run_dir):
        for name in files:
            if _TEMP_RE.match(name):
                path = Path(folder) / name
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    if removed:
        logger.info("removed %d temp file(s) of interrupted writes: %s", len(removed),
                    ", ".join(str(p.relative_to(run_dir)) for p in removed[:5]))
    return removed
