"""Build the book the way ``make book`` does, and say plainly what happened.

``python -m brainkit.bookbuild [BOOK] [--path-output DIR]`` runs ``jupyter-book build`` with
warnings as errors, and around it:

- progress: ``BRAINKIT_PROGRESS=1``, so every training run or probe that the results store
  has to compute prints a line to the terminal while a chapter executes (see
  :mod:`brainkit.experiments.progress`); Sphinx's own lines stream as usual;
- no cell timeout (``book/_config.yml``): a slow or busy machine makes a build slower, never
  a failure, and every finished run is cached, so an interrupted build continues;
- a quiet kernel: the notebook kernels log errors only (no "Kernel is running over TCP
  without encryption" warning per chapter);
- on failure, one paragraph instead of Sphinx's traceback: which chapter failed, the error's
  last lines, where the full log is, and that running the same command again continues from
  the results store.
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

__all__ = ["main", "build", "failure_summary"]

_ROOT = Path(__file__).resolve().parents[1]


def _quiet_kernel_dir(tmp: Path) -> Path:
    """A ``JUPYTER_PATH`` entry whose ``python3`` kernel logs errors only and leaves the
    process's file descriptor 2 alone.

    ipykernel copies whatever is written to fd 2 into the running cell's output (except
    under pytest, which is why the book test could not see it), so the progress lines of a
    cold build became ``stderr`` outputs of the training cells, and warnings-as-errors then
    failed ``make book``. With ``capture_fd_output=False`` they reach the build's terminal.
    """
    spec = tmp / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.log_level=ERROR", "--IPKernelApp.capture_fd_output=False"],
        "display_name": "Python 3 (ipykernel)", "language": "python",
        "metadata": {"debugger": False}}))
    return tmp


_CHAPTER = re.compile(r"(?:Executing notebook failed|Execution Failed|ExecutionError:)"
                      r"[^\n]*?([\w./-]+\.(?:md|ipynb))", re.I)
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^Exception occurred|"
                        r"^Extension error|CellExecutionError|^-{20,}$")
_ERROR_LINE = re.compile(r"^(\w+(?:Error|Exception|Interrupt)\b:.*)$", re.M)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# the wrappers Sphinx and myst-nb put around the cell's own error
_WRAPPERS = ("ExecutionError", "RuntimeError:", "CellExecutionError", "SphinxError")


def failure_summary(log: str, *, returncode: int, log_path: Path | None, store: str) -> str:
    """The one paragraph printed when a build fails (what, where, what next)."""
    log = _ANSI.sub("", log)
    chapter = _CHAPTER.search(log)
    errors = [e for e in _ERROR_LINE.findall(log) if not e.startswith(_WRAPPERS)]
    where = (f"in {Path(chapter.group(1)).name}" if chapter
             else "(no chapter named in the log)")
    what = errors[0].strip().rstrip(".") if errors else "see the log"
    parts = [f"The book build failed {where} (exit {returncode}): {what}."]
    if log_path is not None:
        parts.append(f"The full log is {log_path}.")
    parts.append(f"Every finished training run is kept in the results store ({store}): "
                 "running the same command again continues from there instead of starting "
                 "over.")
    return " ".join(parts)


def build(book: Path, *, path_output: Path | None = None, extra_args=(),
          env: dict | None = None) -> int:
    """Run ``jupyter-book build`` on ``book``; return its exit code (0 on success)."""
    from .experiments.store import default_store

    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(book),
           "--warningiserror", "--nitpick", "--keep-going", *extra_args]
    if path_output is not None:
        cmd += ["--path-output", str(path_output)]
    env = dict(os.environ if env is None else env)
    env.setdefault("BRAINKIT_PROGRESS", "1")
    env.setdefault("BRAINKIT_PROFILE", "ci")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    store = env.get("BRAINKIT_STORE") or str(default_store().root)
    out_dir = (path_output or book) / "_build"
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "build.log"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="brainkit-kernels-") as tmp:
        kernels = _quiet_kernel_dir(Path(tmp))
        env["JUPYTER_PATH"] = os.pathsep.join(
            [str(kernels)] + ([env["JUPYTER_PATH"]] if env.get("JUPYTER_PATH") else []))
        lines, echo = [], True
        with open(log_path, "w") as log, subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                bufsize=1) as proc:
            for line in proc.stdout:
                log.write(line)
                lines.append(line)
                # From the first traceback on, the rest goes to the log only: the summary
                # below says what failed.
                echo = echo and not _TRACEBACK.search(_ANSI.sub("", line))
                if echo or line.startswith("[brainkit "):
                    sys.stdout.write(line)
                    sys.stdout.flush()
            code = proc.wait()
    seconds = time.perf_counter() - start
    if code != 0:
        print("\n" + failure_summary("".join(lines), returncode=code, log_path=log_path,
                                     store=store), file=sys.stderr)
        return code
    html = out_dir / "html" / "index.html"
    print(f"Built in {seconds:.0f} s (profile {env['BRAINKIT_PROFILE']}). Book HTML: {html}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brainkit.bookbuild",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("book", nargs="?", default=str(_ROOT / "book"),
                        help="the book folder (default: book/ of this checkout)")
    parser.add_argument("--path-output", type=Path, default=None,
                        help="build into DIR/_build instead of BOOK/_build")
    args = parser.parse_args(argv)
    return build(Path(args.book), path_output=args.path_output)


if __name__ == "__main__":
    sys.exit(main())
