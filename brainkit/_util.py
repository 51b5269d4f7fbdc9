"""Small shared helpers: atomic file writes, signal flags and folder locks.

Private to brainkit; used by the cohort store, checkpoints, training, imports and sweeps.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

try:  # POSIX; elsewhere FolderLock does nothing (documented)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["atomic_path", "check_int", "SignalFlag", "FolderLock", "LOCK_NAME"]

#: File name of a folder's lock (see :class:`FolderLock`).
LOCK_NAME = ".brainkit.lock"


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an ``int`` (numpy integers too) if it is one and ``>= minimum``, else a
    ValueError naming ``name``. Shared by :class:`~brainkit.train.TrainConfig`,
    :func:`~brainkit.train.fit` and :func:`~brainkit.data.grid.brain_box`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it onto ``path``.

    If the block raises (``KeyboardInterrupt`` included) the temporary file is removed and
    ``path`` keeps its previous content, so ``path`` is never half-written.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class SignalFlag:
    """Record the first SIGTERM / SIGINT in ``signum`` instead of dying, inside a ``with``.

    Parameters
    ----------
    enabled : bool, default True
        Handlers are installed only if True and in the main thread (the only thread that may
        install them); otherwise the flag stays ``None``.
    restore_on_first : bool, default False
        False: a second signal restores the previous handlers and raises
        ``KeyboardInterrupt`` at once. True: the first signal already restores them, so a
        second one acts as it would without the flag.

    The handler only records: raising from it could land inside any library call.
    """

    def __init__(self, enabled: bool = True, *, restore_on_first: bool = False):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.restore_on_first = restore_on_first
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.restore_on_first:
            self._restore()
        elif self.signum is not None:
            self._restore()
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}")
        self.signum = signum

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self):
        if self.enabled:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        self._restore()
        return False


class FolderLock:
    """An exclusive lock on a folder, held by one process at a time.

    ``fcntl.flock`` on ``folder/.brainkit.lock`` (created if needed, with the holder's pid,
    host, start time and ``what`` written in it). The kernel releases the lock when the
    holder exits, however it exits (SIGKILL included), so a crashed process never blocks the
    next one and there is no stale-lock guessing. Advisory: it stops other brainkit processes, not other
    programs. On systems without ``fcntl`` (Windows) it does nothing.

    Parameters
    ----------
    folder : path-like
        Created if absent.
    what : str
        What holds it, for the message (e.g. ``"training run"``).
    blocking : bool, default False
        False: refuse at once with :class:`brainkit.errors.FolderLockedError` when another
        process holds it. True: wait for it (``on_wait(pid)`` is called once first).
    path : path-like, optional
        The lock file (default ``folder/.brainkit.lock``).
    remove : bool, default False
        Delete the lock file on release (only with ``blocking=False``: a process waiting on
        a removed file would hold a lock nobody else sees).
    on_wait : callable, optional
        ``on_wait(pid)`` before a blocking wait.

    Examples
    --------
    >>> with FolderLock("runs/exp", what="training run"):   # doctest: +SKIP
    ...     train()
    """

    def __init__(self, folder, *, what: str = "process", blocking: bool = False, path=None,
                 remove: bool = False, on_wait=None):
        if remove and blocking:
            raise ValueError("remove=True needs blocking=False")
        self.folder = Path(folder)
        self.path = Path(path) if path is not None else self.folder / LOCK_NAME
        self.what = what
        self.blocking = blocking
        self.remove = remove
        self.on_wait = on_wait
        self._fd: int | None = None

    @staticmethod
    def holder(path) -> int | None:
        """The pid written in a lock file (None if unreadable)."""
        return FolderLock._read(path)[0]

    @staticmethod
    def _read(path) -> tuple[int | None, str | None]:
        """``(pid, what)`` written in a lock file (None where unreadable)."""
        try:
            fields = Path(path).read_text().split(maxsplit=3)
            pid = int(fields[0]) if fields else None
            return pid, (fields[3].strip() if len(fields) > 3 else None)
        except (OSError, ValueError):
            return None, None

    def _refuse(self):
        from .errors import FolderLockedError

        pid, what = self._read(self.path)
        who = f"pid {pid}" if pid is not None else "another process"
        raise FolderLockedError(
            f"{self.folder} is in use by another {what or self.what} ({who} holds "
            f"{self.path}); wait for it to finish or choose another folder",
            folder=self.folder, pid=pid)

    def acquire(self) -> FolderLock:
        if fcntl is None or self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not self.blocking:
                        self._refuse()
                    if self.on_wait is not None:
                        self.on_wait(self.holder(self.path))
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except OSError as err:  # a file system without locks (ENOLCK, EOPNOTSUPP)
                    import warnings

                    warnings.warn(f"{self.path}: cannot lock on this file system ({err}); "
                                  f"nothing stops another {self.what} from using "
                                  f"{self.folder}", stacklevel=3)
                    os.close(fd)
                    return self
                # The file may have been removed (remove=True) between our open and flock:
                # then we hold a lock on a file nobody else sees; try again.
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            except BaseException:
                os.close(fd)
                raise
            break
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} "
                     f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.what}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.remove:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
            else:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
