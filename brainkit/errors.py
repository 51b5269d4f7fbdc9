"""Errors that describe a user's mistake, not a bug in brainkit.

Every class here derives from :class:`UserError` *and* from the built-in exception a library
caller would expect (``ValueError``, ``FileNotFoundError``, ...), so existing ``except
ValueError`` code keeps working. The message always names the argument, file or row at fault
and says what was expected.

The ``brainkit`` command prints a :class:`UserError` as one line,
``brainkit <command>: error: <message>``, and exits with status 2; any other exception is a
bug and keeps its traceback (``brainkit --debug`` or ``BRAINKIT_DEBUG=1`` show the traceback
of user errors too). See :func:`brainkit.cli.main`.

Examples
--------
>>> from brainkit.errors import InputError, UserError
>>> try:
...     raise InputError("--epochs: expected an integer >= 1, got 0")
... except ValueError as err:          # still a ValueError for library callers
...     isinstance(err, UserError)
True
"""

from __future__ import annotations

__all__ = [
    "UserError",
    "InputError",
    "MissingFileError",
    "ExistingOutputError",
    "FolderLockedError",
    "NonFiniteError",
]


class UserError(Exception):
    """Base class: the input (an argument, a file, a table, an image) is at fault."""


class InputError(UserError, ValueError):
    """A bad argument value or file content (a table, an image, a checkpoint, a run)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class ExistingOutputError(UserError, FileExistsError):
    """An output would replace something that already exists (pass the overwrite flag)."""


class FolderLockedError(UserError, RuntimeError):
    """Another process holds the folder (a training run, an import, a store run).

    Attributes
    ----------
    folder : pathlib.Path
    pid : int or None
        The process holding the lock, when it could be read.
    """

    def __init__(self, message: str, *, folder=None, pid: int | None = None):
        super().__init__(message)
        self.folder = folder
        self.pid = pid


class NonFiniteError(UserError, FloatingPointError):
    """NaN or infinite numbers where finite ones are needed (a loss, weights, outputs)."""
