"""Small shared helpers: atomic file writes and signal flags.

Private to brainkit; used by the cohort store, checkpoints, training and sweeps.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "SignalFlag"]


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
