"""The book build's kernel: progress lines go to the terminal, never into a page."""

from __future__ import annotations

import os

import pytest

from brainkit import bookbuild


@pytest.mark.slow
def test_progress_lines_stay_out_of_the_cells(tmp_path, monkeypatch):
    """A cold build prints a line per training run to fd 2. ipykernel copies fd 2 into the
    cell's output unless told not to (and never under pytest: PYTEST_CURRENT_TEST is
    removed from the kernel's environment here, as `make book` runs it); a ``stderr`` output
    fails the warnings-as-errors build."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("JUPYTER_PATH", str(bookbuild._quiet_kernel_dir(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["BRAINKIT_PROGRESS"] = "1"
    code = ("import os\n"
            "from brainkit.experiments import progress\n"
            "with progress.step('train exp, 10 images, seed 0'):\n"
            "    os.write(2, b'from a C library\\n')\n"
            "print('cell output')")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300).execute(env=env)
    outputs = nb.cells[0].outputs
    assert [o.get("name") for o in outputs] == ["stdout"], outputs
    assert outputs[0]["text"] == "cell output\n"
