"""The book is built once per test session, as `make book` builds it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "book"


def toc_files() -> list[str]:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    files = [toc["root"]]
    stack = list(toc.get("chapters", [])) + [c for p in toc.get("parts", []) for c in p["chapters"]]
    while stack:
        entry = stack.pop(0)
        files.append(entry["file"])
        stack.extend(entry.get("sections", []))
    return files


@pytest.fixture(scope="session")
def toc_entries() -> list[str]:
    """Every page of the table of contents, e.g. ``["intro", "chapters/data", ...]``."""
    return toc_files()


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """Build the book once, as `make book` does (brainkit.bookbuild), into a temporary folder."""
    from brainkit.experiments import default_store

    out = tmp_path_factory.mktemp("book")
    before = len(default_store().keys())   # the build's store (BRAINKIT_STORE or the project's)
    env = {**os.environ, "BRAINKIT_PROFILE": os.environ.get("BRAINKIT_PROFILE", "ci"),
           "BRAINKIT_WORKERS": "auto"}    # as `make book` (tests default to 1)
    proc = subprocess.run(
        [sys.executable, "-m", "brainkit.bookbuild", str(BOOK), "--path-output", str(out)],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        log = out / "_build" / "build.log"
        pytest.fail(f"book build failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}\n"
                    f"{log.read_text()[-8000:] if log.is_file() else proc.stdout[-8000:]}")
    (out / "_build" / "build-stdout.txt").write_text(proc.stdout)
    (out / "_build" / "runs-computed.txt").write_text(str(len(default_store().keys()) - before))
    return out / "_build" / "html"


