"""Progress lines for long builds: one line on the terminal per run that has to be computed.

A book chapter's cell output goes into the page, not to the terminal, so a build that trains
for minutes would otherwise look hung. With ``BRAINKIT_PROGRESS=1`` (the book build sets it)
every run the results store computes prints a line to the process's *original* standard error
(``sys.__stderr__``, which a notebook kernel inherits from the build), e.g.::

    [brainkit 14:02:11] train exp, 401 images, seed 0 ...
    [brainkit 14:02:47] train exp, 401 images, seed 0: done in 36 s

Runs read back from the store print nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

__all__ = ["ENV", "enabled", "describe", "step"]

#: Environment variable that switches the lines on.
ENV = "BRAINKIT_PROGRESS"


def enabled() -> bool:
    """True when ``BRAINKIT_PROGRESS`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get(ENV, "") not in ("", "0")


def describe(config: Mapping) -> str:
    """A short label of a store run: ``"train exp, 401 images, seed 0"``."""
    parts = [str(config.get("kind", "run"))]
    for key in ("loss", "probe", "design"):
        if key in config:
            parts[0] += f" {config[key]}"
    if "n_train" in config:
        parts.append(f"{config['n_train']} images")
    if "datasets" in config:
        parts.append("+".join(map(str, config["datasets"])))
    if "seed" in config:
        parts.append(f"seed {config['seed']}")
    return ", ".join(parts)


def _write(line: str) -> None:
    stream = sys.__stderr__ or sys.stderr
    try:
        stream.write(f"[brainkit {time.strftime('%H:%M:%S')}] {line}\n")
        stream.flush()
    except (OSError, ValueError):    # a closed or detached stream: progress is optional
        pass


@contextmanager
def step(label: str) -> Iterator[None]:
    """Print ``label ...`` before the block and ``label: done in N s`` after it."""
    if not enabled():
        yield
        return
    _write(f"{label} ...")
    start = time.perf_counter()
    try:
        yield
    except BaseException as err:
        _write(f"{label}: stopped after {time.perf_counter() - start:.0f} s "
               f"({type(err).__name__})")
        raise
    _write(f"{label}: done in {time.perf_counter() - start:.0f} s")
