"""The CLI error boundary: user mistakes are one line and exit 2, bugs keep their traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import brainkit.data.cli as data_cli
from brainkit.cli import is_user_error, main
from brainkit.errors import (
    ExistingOutputError,
    FolderLockedError,
    InputError,
    MissingFileError,
    NonFiniteError,
    UserError,
)
from brainkit.train.inference import resolve_indices


def _raising(exc_factory):
    def handler(args):
        raise exc_factory()  # a factory may raise itself, inside brainkit
    return handler


@pytest.fixture
def info_raises(monkeypatch):
    """Make ``brainkit data info`` raise what the test asks for."""
    def install(factory):
        monkeypatch.setattr(data_cli, "_info", _raising(factory))
    return install


def test_user_errors_are_also_the_builtin_types():
    assert issubclass(InputError, ValueError) and issubclass(MissingFileError, FileNotFoundError)
    assert issubclass(ExistingOutputError, FileExistsError)
    assert issubclass(FolderLockedError, RuntimeError)
    assert issubclass(NonFiniteError, FloatingPointError)
    for cls in (InputError, MissingFileError, ExistingOutputError, FolderLockedError,
                NonFiniteError):
        assert issubclass(cls, UserError)
    from brainkit.data import CohortError, ImageError, ManifestError
    from brainkit.experiments.sweep import GridError

    for cls in (CohortError, ImageError, ManifestError, GridError):
        assert issubclass(cls, InputError) and issubclass(cls, ValueError)


@pytest.mark.parametrize("factory, line", [
    (lambda: InputError("--thing: expected X, got Y"), "--thing: expected X, got Y"),
    (lambda: FileNotFoundError(2, "No such file or directory", "/x/y.tsv"),
     "/x/y.tsv: No such file or directory"),
    (lambda: PermissionError(13, "Permission denied", "/root/out"), "/root/out: Permission denied"),
    (lambda: resolve_indices([7], 3), "indices holds positions outside 0..2: [7]"),
])
def test_user_mistakes_print_one_line_and_exit_2(factory, line, info_raises, capsys):
    info_raises(factory)
    assert main(["data", "info", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert err == f"brainkit data info: error: {line}\n"


@pytest.mark.parametrize("factory", [
    lambda: np.zeros(-1),                         # a ValueError raised inside numpy: a bug
    lambda: {}["key"],                            # KeyError
    lambda: 1 / 0,                                # ZeroDivisionError
    lambda: TypeError("unexpected"),
])
def test_bugs_keep_their_traceback(factory, info_raises):
    def handler_factory():
        value = factory()
        if isinstance(value, BaseException):
            raise value
        raise AssertionError("unreachable")
    info_raises(handler_factory)
    with pytest.raises((ValueError, KeyError, ZeroDivisionError, TypeError)):
        main(["data", "info", "somewhere"])


def test_a_valueerror_from_a_dependency_is_not_a_user_error():
    try:
        np.zeros(-1)
    except ValueError as err:
        assert not is_user_error(err)
    try:
        raise ValueError("raised here, in a test, not in brainkit")
    except ValueError as err:
        assert not is_user_error(err)


def test_debug_anywhere_on_the_line_and_brainkit_debug_show_the_traceback(info_raises,
                                                                           monkeypatch):
    info_raises(lambda: InputError("a user mistake"))
    with pytest.raises(InputError):
        main(["data", "info", "somewhere", "--debug"])
    with pytest.raises(InputError):
        main(["--debug", "data", "info", "somewhere"])
    monkeypatch.setenv("BRAINKIT_DEBUG", "1")
    with pytest.raises(InputError):
        main(["data", "info", "somewhere"])
    monkeypatch.setenv("BRAINKIT_DEBUG", "0")
    assert main(["data", "info", "somewhere"]) == 2


def test_a_signal_stop_exits_128_plus_n(info_raises, capsys):
    class Stopped(RuntimeError):
        signal_number = 15
    info_raises(lambda: Stopped("stopped by SIGTERM; nothing was kept"))
    assert main(["data", "info", "somewhere"]) == 143
    assert capsys.readouterr().err == "brainkit data info: stopped by SIGTERM; nothing was kept\n"


def test_the_installed_command_prints_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "brainkit.cli", "data", "info",
                           str(tmp_path / "nowhere")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("brainkit data info: error: ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
