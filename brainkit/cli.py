"""The ``brainkit`` command.

Subcommands are registered by the subpackage that implements them; each module exposes
``register(subparsers)`` which adds its parsers and sets ``func`` (a callable taking the parsed
namespace and returning an exit code).

Exit status: 0 success; 1 a check that found problems (``data check``) or a sweep with failed
tasks; 2 a user mistake (a bad argument, a missing or malformed file, a folder in use), printed
as one line ``brainkit <command>: error: ...``; 128 + N after signal N (the run can resume).
Anything else is a bug and keeps its traceback. ``brainkit --debug ...`` or
``BRAINKIT_DEBUG=1`` shows the traceback of user mistakes too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

from . import __version__

__all__ = ["main", "build_parser"]

#: Modules that contribute subcommands, in help order.
_COMMAND_MODULES = (
    "brainkit.data.cli",
    "brainkit.train.cli",
    "brainkit.experiments.cli",
    "brainkit.eval.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainkit",
        description="Brain-age estimation with contrastive learning (Barbano et al.).",
    )
    parser.add_argument("--version", action="version", version=f"brainkit {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of every error, user mistakes included "
                             "(also BRAINKIT_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # that part of brainkit is not installed in this build
                continue
            raise
        module.register(subparsers)
    return parser


#: Errors from the operating system that name a file; always the user's to fix.
_FILE_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                PermissionError)
_PACKAGE_DIR = Path(__file__).resolve().parent


def _raised_by_brainkit(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is brainkit code (a validation
    ``raise`` of ours, not a failure inside numpy, torch, pandas, ...)."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return False
    try:
        return Path(frames[-1].filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def is_user_error(err: BaseException) -> bool:
    """Whether the command line reports ``err`` as a user mistake (one line, exit 2).

    True for :class:`brainkit.errors.UserError` (and the brainkit errors built on it), for
    operating-system errors that name a file (missing, existing, a folder where a file was
    expected, permission denied), and for a ``ValueError`` raised by brainkit's own
    validation. A ``ValueError`` raised inside a dependency, and every other exception, is
    treated as a bug.
    """
    from .errors import UserError

    if isinstance(err, UserError):
        return True
    if isinstance(err, _FILE_ERRORS):
        return True
    return isinstance(err, ValueError) and _raised_by_brainkit(err)


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"  # an OS error: "[Errno 2] ..." made readable
    return str(err).strip() or type(err).__name__


def _command_name(args) -> str:
    parts = ["brainkit"]
    command = getattr(args, "command", None)
    if command:
        parts.append(command)
        sub = getattr(args, f"{command}_command", None)
        if sub:
            parts.append(sub)
    return " ".join(parts)


def _debug(args) -> bool:
    return bool(getattr(args, "debug", False)) or \
        os.environ.get("BRAINKIT_DEBUG", "").strip() not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run the ``brainkit`` command; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = debug
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if _debug(args):
            raise
        signum = getattr(err, "signal_number", None)
        if isinstance(signum, int):  # stopped cleanly on a signal (the message says how)
            print(f"{_command_name(args)}: {err}", file=sys.stderr)
            return 128 + signum
        if not is_user_error(err):
            raise
        print(f"{_command_name(args)}: error: {_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
