"""The full book build, timed: from an empty results store, and again with the store warm.

Runs ``python -m brainkit.bookbuild book`` exactly as ``make book`` does (``jupyter-book
build --warningiserror --nitpick --keep-going`` with a quiet kernel), but into a temporary
output folder with a temporary, empty results store (``BRAINKIT_STORE``), so nothing the checkout already holds is reused or changed. The first
build trains every run the chapters need; the second (``--warm``) finds them all in the store
and only re-executes the chapters. Prints the wall time of each build and each chapter's
execution time (myst-nb's own figure), and, under each chapter, the work it did: every trained
run, fine-tuning, probe and example the chapter's progress lines report (``BRAINKIT_PROGRESS``),
counted and summed by kind (:func:`work_by_chapter`). Runs trained side by side overlap, so a
chapter's summed run seconds can exceed its execution time. With ``--json`` writes them as a
benchmark report (see :func:`brainkit.experiments.speed.benchmark_reports`).

Examples
--------
::

    python benchmarks/bench_book.py --json benchmarks/results/book-ci-cpu.json   # ci, ~10 min
    BRAINKIT_PROFILE=smoke python benchmarks/bench_book.py --no-warm              # ~5 min

The profile is ``BRAINKIT_PROFILE`` (default ``ci``). On a shared machine the figures grow
with the load: the build runs torch on every core.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from brainkit.experiments.speed import report_header

ROOT = Path(__file__).resolve().parents[1]
# myst-nb logs "<source>: Executed notebook in 12.34 seconds" for each executed chapter.
EXECUTED = re.compile(r"(\S+?)(?:\.md|\.ipynb)?:\s+Executed notebook in ([0-9.]+) seconds")
# ... and "<source>: Executing notebook ..." before it runs the chapter's cells.
EXECUTING = re.compile(r"^(\S+?)(?:\.md|\.ipynb)?:\s+Executing notebook")
# brainkit's progress lines: "[brainkit 13:42:54] train l1, 401 images, seed 0: done in 33 s".
DONE = re.compile(r"^\[brainkit [0-9:]+\] (.+?): done in ([0-9.]+) s")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def work_by_chapter(log: str) -> dict:
    """What each chapter of a build log trained or fitted, from brainkit's progress lines.

    A finished piece of work (``[brainkit ...] <what>, <details>: done in <s> s``) counts for
    the chapter whose "Executing notebook" line came last before it; its kind is ``<what>``
    (e.g. ``"train l1"``, ``"finetune"``, ``"probe openbhb_challenge"``).

    Returns
    -------
    dict
        ``{chapter: {kind: {"n": count, "seconds": summed seconds}}}``, chapters and kinds in
        the order they first appear.
    """
    work: dict = {}
    chapter = None
    for line in log.splitlines():
        line = _ANSI.sub("", line).strip()
        started = EXECUTING.match(line)
        if started:
            chapter = Path(started.group(1)).stem
            continue
        done = DONE.match(line)
        if done and chapter is not None:
            kind = done.group(1).split(",")[0].strip()
            entry = work.setdefault(chapter, {}).setdefault(kind, {"n": 0, "seconds": 0.0})
            entry["n"] += 1
            entry["seconds"] += float(done.group(2))
    return work


def build(out: Path, store: Path, log: Path) -> dict:
    """One build; returns its wall time, exit code and per-chapter execution times.

    Runs ``python -m brainkit.bookbuild`` (what ``make book`` runs: its quiet kernel keeps the
    progress lines out of the cells, where warnings-as-errors would fail the build). ``log``
    gets its console output; the figures come from its full log (``OUT/_build/build.log``).
    """
    env = {"BRAINKIT_PROGRESS": "1", **os.environ, "BRAINKIT_STORE": str(store)}
    cmd = [sys.executable, "-m", "brainkit.bookbuild", str(ROOT / "book"),
           "--path-output", str(out)]
    start = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    full = out / "_build" / "build.log"
    text = (full if full.exists() else log).read_text(errors="replace")
    chapters = {}
    for source, seconds in EXECUTED.findall(text):
        chapters[Path(source).stem] = float(seconds)
    return {"wall_s": wall, "returncode": rc, "chapters": chapters,
            "work": work_by_chapter(text), "log": str(log)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-warm", dest="warm", action="store_false",
                        help="skip the second build (with the store warm)")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--keep", default=None,
                        help="keep the builds, store and logs in this folder (default: a "
                             "temporary folder, removed)")
    args = parser.parse_args(argv)
    profile = os.environ.get("BRAINKIT_PROFILE", "ci")
    report = {"benchmark": "bench_book",
              **report_header(None if argv is None else [__file__, *argv]),
              "profile": profile, "builds": {}, "figures": []}
    print(f"book build, profile {profile}; {report['machine']['cores']} cores, torch "
          f"{report['machine']['torch']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        store = root / "store"
        kinds = ("empty store", "warm store") if args.warm else ("empty store",)
        for i, kind in enumerate(kinds):
            print(f"build {i + 1}/{len(kinds)} ({kind}) ...", flush=True)
            result = build(root / f"build-{i}", store, root / f"build-{i}.log")
            report["builds"][kind] = result
            status = "ok" if result["returncode"] == 0 else \
                f"FAILED (exit {result['returncode']}; log {result['log']})"
            print(f"  {result['wall_s']:.0f} s, {status}", flush=True)
            for chapter, seconds in result["chapters"].items():
                work = ", ".join(f"{kind} x{w['n']} {w['seconds']:.0f} s" for kind, w
                                 in result["work"].get(chapter, {}).items())
                print(f"    {chapter:<16} {seconds:7.1f} s" + (f"  ({work})" if work else ""),
                      flush=True)
            if result["returncode"] != 0:
                if not args.keep:
                    print((root / f"build-{i}.log").read_text(errors="replace")[-4000:])
                break
    for kind, result in report["builds"].items():
        setting = f"{profile} profile, {kind}"
        report["figures"].append({"figure": "book build (wall)", "value": result["wall_s"],
                                  "unit": "s", "setting": setting})
        for chapter, seconds in result["chapters"].items():
            report["figures"].append({"figure": f"chapter {chapter} (execution)",
                                      "value": seconds, "unit": "s", "setting": setting})
    ok = all(r["returncode"] == 0 for r in report["builds"].values())
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
