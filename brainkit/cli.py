"""The ``brainkit`` command.

Subcommands are registered by the subpackage that implements them; each module exposes
``register(subparsers)`` which adds its parsers and sets ``func`` (a callable taking the parsed
namespace and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

__all__ = ["main", "build_parser"]

#: Modules that contribute subcommands, in help order.
_COMMAND_MODULES = (
    "brainkit.data.cli",
    "brainkit.train.cli",
    "brainkit.experiments.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainkit",
        description="Brain-age estimation with contrastive learning (Barbano et al.).",
    )
    parser.add_argument("--version", action="version", version=f"brainkit {__version__}")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
