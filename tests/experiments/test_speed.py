"""Speed measurements: the machine, benchmark reports, loader timing, the book's figures."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings

import numpy as np
import pytest
import torch

from brainkit.data import make_cohort
from brainkit.data.paths import PROJECT_ROOT
from brainkit.experiments import benchmark_reports, loader_throughput, machine, step_throughput
from brainkit.experiments.speed import REPORT_COLUMNS, report_header, time_loader
from brainkit.plots import throughput_bars

BENCHMARKS = PROJECT_ROOT / "benchmarks"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_cohort():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_cohort("openbhb", n_subjects=12, grid_mm=6, seed=0)


def _script(name: str):
    """Import a benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(machine_info: dict, figures: list, **extra) -> dict:
    return {"benchmark": "bench_x", "command": "python benchmarks/bench_x.py --json r.json",
            "date": "2026-12-01 08:00 UTC", "machine": machine_info, "figures": figures,
            **extra}


CPU = {"cpu": "Some CPU", "cores": 2, "memory_gib": 23.5, "gpu": "none", "torch": "2.13.0"}
GPU = {"cpu": "Big CPU", "cores": 16, "memory_gib": 128.0, "gpu": "NVIDIA H200",
       "torch": "2.11.0+cu128"}


# --------------------------------------------------------------------------- the machine
def test_machine_describes_this_process():
    m = machine()
    assert m["cores"] == os.cpu_count()
    assert m["torch"] == torch.__version__
    assert m["torch_threads"] == torch.get_num_threads() == 1
    assert m["memory_gib"] is None or m["memory_gib"] > 0
    if not torch.cuda.is_available():
        assert m["gpu"] == "none" and m["gpu_memory_gib"] is None
    assert m["cpu"]
    assert m["cpu_capability"] is None or isinstance(m["cpu_capability"], str)
    assert m["cpu_bf16"] in (None, True, False)


def test_cpu_details_tell_cpus_with_one_model_name_apart(tmp_path):
    """Cloud CPUs all say "AMD EPYC": the family / model and native bf16 come from cpuinfo
    (the first processor's block), and a report's machine line shows them."""
    from brainkit.experiments.speed import _cpu_details

    block = ("processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: {fam}\n"
             "model\t\t: {model}\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 {extra}\n\n")
    info = tmp_path / "cpuinfo"
    info.write_text(block.format(i=0, fam=25, model=17, extra="avx512f avx512_bf16")
                    + block.format(i=1, fam=23, model=49, extra=""))
    assert _cpu_details(str(info)) == {"cpu_id": "family 25 model 17", "cpu_bf16": True}
    info.write_text(block.format(i=0, fam=23, model=49, extra=""))
    assert _cpu_details(str(info)) == {"cpu_id": "family 23 model 49", "cpu_bf16": False}
    assert _cpu_details(str(tmp_path / "absent")) == {"cpu_id": None, "cpu_bf16": None}
    report = {"command": "python x.py", "figures": [{"figure": "f", "value": 1, "unit": "s"}],
              "machine": {"cpu": "AMD EPYC", "cpu_id": "family 23 model 49",
                          "cpu_capability": "AVX2", "cores": 2, "memory_gib": 23.5,
                          "gpu": "none", "torch": "2.13.0"}}
    (tmp_path / "r.json").write_text(json.dumps(report))
    table = benchmark_reports(tmp_path)
    assert table["machine"].iloc[0] == ("AMD EPYC (family 23 model 49, AVX2), 2 cores, "
                                        "23.5 GiB; torch 2.13.0")


def test_report_header_names_the_command_relative_to_the_working_directory(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    head = report_header([str(BENCHMARKS / "bench_data.py"), "--grid-mm", "6", "--json",
                          "a file.json"])
    assert head["command"] == "python benchmarks/bench_data.py --grid-mm 6 --json 'a file.json'"
    assert head["date"].endswith("UTC") and head["date"][:2] == "20"
    assert head["machine"]["cores"] == os.cpu_count()
    import brainkit
    assert head["brainkit"] == brainkit.__version__


# --------------------------------------------------------------------------- reports
def test_benchmark_reports_one_row_per_figure_in_file_order(tmp_path):
    (tmp_path / "b-gpu.json").write_text(json.dumps(_report(GPU, [
        {"figure": "end to end, plain", "value": 274, "unit": "volumes/s", "setting": "1.5 mm"},
        {"figure": "end to end, brainkit", "value": 386.5, "unit": "volumes/s"}])))
    (tmp_path / "a-cpu.json").write_text(json.dumps(_report(CPU, [
        {"figure": "book build", "value": 600, "unit": "s"}])))
    # a GPU machine that benchmarked its CPU is a CPU figure
    (tmp_path / "c-cpu-on-gpu-box.json").write_text(json.dumps(_report(GPU, [
        {"figure": "step", "value": 3, "unit": "volumes/s"}], device_type="cpu")))
    (tmp_path / "notes.txt").write_text("not a report")
    table = benchmark_reports(tmp_path)
    assert list(table.columns) == list(REPORT_COLUMNS)
    assert table["file"].tolist() == ["a-cpu.json", "b-gpu.json", "b-gpu.json",
                                      "c-cpu-on-gpu-box.json"]
    assert table["value"].tolist() == [600.0, 274.0, 386.5, 3.0]
    assert table["setting"].tolist() == ["", "1.5 mm", "", ""]
    assert table["device"].tolist() == ["CPU", "NVIDIA H200", "NVIDIA H200", "CPU"]
    assert table["machine"].iloc[0] == "Some CPU, 2 cores, 23.5 GiB; torch 2.13.0"
    assert "NVIDIA H200" in table["machine"].iloc[1]
    assert (table["command"] == "python benchmarks/bench_x.py --json r.json").all()


def test_benchmark_reports_empty_folder_and_errors(tmp_path):
    empty = benchmark_reports(tmp_path)
    assert empty.empty and list(empty.columns) == list(REPORT_COLUMNS)
    with pytest.raises(FileNotFoundError, match="no benchmark reports folder"):
        benchmark_reports(tmp_path / "absent")
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not a JSON benchmark report"):
        benchmark_reports(tmp_path)
    bad.write_text(json.dumps({"command": "x", "figures": []}))
    with pytest.raises(ValueError, match=r"broken.json: a benchmark report needs \['machine'\]"):
        benchmark_reports(tmp_path)
    bad.write_text(json.dumps(_report(CPU, [{"figure": "a", "value": 1, "unit": "s"},
                                            {"figure": "b", "value": 2}])))
    with pytest.raises(ValueError, match=r"broken.json: figures\[1\] lacks \['unit'\]"):
        benchmark_reports(tmp_path)


def test_the_recorded_reports_of_the_project_are_valid():
    """The book's table reads benchmarks/results/: every committed report must parse."""
    table = benchmark_reports()
    assert not table.empty
    assert table["value"].notna().all()
    assert set(table["unit"]) <= {"volumes/s", "s", "ratio"}
    assert table["command"].str.startswith("python benchmarks/").all()


# --------------------------------------------------------------------------- loaders
def test_time_loader_visits_each_full_batch_once_per_pass():
    seen = []

    def load(idx):
        seen.append(np.asarray(idx))
        return torch.zeros(len(idx), 1)

    median, best = time_loader(load, 10, 3, epochs=2)
    assert best >= median > 0
    assert [len(b) for b in seen] == [3] * 6  # 3 full batches per pass, the rest dropped
    for p in range(2):
        drawn = np.concatenate(seen[3 * p:3 * p + 3])
        assert len(set(drawn.tolist())) == 9 and drawn.max() < 10
        expected = np.random.default_rng(p).permutation(10)[:9]
        np.testing.assert_array_equal(drawn, expected)


def test_time_loader_prefetch_and_before_epoch():
    fetched, decoded, calls = [], [], []

    def fetch(idx):
        fetched.append(tuple(idx))
        return torch.as_tensor(idx)

    def to_device(t):
        decoded.append(tuple(t.tolist()))
        return t

    time_loader((fetch, to_device), 8, 4, epochs=3, prefetch=True,
                before_epoch=lambda: calls.append(1))
    assert len(calls) == 3
    assert decoded == fetched and len(decoded) == 6


@pytest.mark.parametrize("n, batch, epochs", [(4, 5, 1), (4, 0, 1), (4, 2, 0)])
def test_time_loader_refuses_bad_arguments(n, batch, epochs):
    with pytest.raises(ValueError):
        time_loader(lambda idx: idx, n, batch, epochs=epochs)


def test_loader_throughput_measures_every_data_path(tiny_cohort, tmp_path):
    table = loader_throughput(tiny_cohort, batch_size=4, epochs=1, workdir=tmp_path)
    assert table.index.tolist() == ["float32 .npy files", "float32 memmap", "uint8 memmap",
                                    "uint8 memmap + prefetch", "uint8 resident"]
    assert (table["volumes_per_s"] > 0).all()
    assert (table["volumes_per_s_best"] >= table["volumes_per_s"]).all()
    assert table.loc["float32 .npy files", "vs_npy"] == pytest.approx(1.0)
    voxels = int(np.prod(tiny_cohort.grid_shape))
    assert table.loc["float32 memmap", "mib_per_image"] == pytest.approx(4 * voxels / 2**20)
    # the packed store is cropped and one byte per voxel: at least 4x smaller
    assert table.loc["uint8 memmap", "mib_per_image"] <= \
        table.loc["float32 memmap", "mib_per_image"] / 4
    assert list(tmp_path.iterdir()) == []  # the temporary copies are gone


def test_loader_throughput_refuses_a_table_only_cohort(tiny_cohort):
    from brainkit.data import Cohort

    with pytest.raises(ValueError, match="table-only"):
        loader_throughput(Cohort(tiny_cohort.table, None, tiny_cohort.affine))


def test_step_throughput_of_the_smoke_profile():
    out = step_throughput("smoke", steps=1, warmup=0, device="cpu")
    assert out["device"] == "cpu"
    assert out["volumes_per_s"] > 0
    assert out["volumes_per_s"] == pytest.approx(out["batch_volumes"] / out["seconds_per_step"])


def test_throughput_bars(tiny_cohort):
    import pandas as pd

    table = pd.DataFrame({"volumes_per_s": [100.0, 250.0, 5.5]},
                         index=["float32 .npy files", "uint8 memmap", "uint8 resident"])
    fig = throughput_bars(table, title="t")
    bar = fig.data[0]
    assert bar.orientation == "h"
    assert list(bar.y) == table.index.tolist() and list(bar.x) == [100.0, 250.0, 5.5]
    assert bar.marker.color[0] != bar.marker.color[1] == bar.marker.color[2]
    assert list(bar.text) == ["100", "250", "5.50"]
    with pytest.raises(ValueError, match="lacks column"):
        throughput_bars(table, value="seconds")
    with pytest.raises(ValueError, match="no rows"):
        throughput_bars(table.iloc[:0])


# --------------------------------------------------------------------------- scripts
def test_bench_data_writes_a_readable_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(PROJECT_ROOT)
    out = tmp_path / "reports"
    out.mkdir()
    rc = _script("bench_data").main(["--grid-mm", "6", "--n-images", "8", "--unique", "4",
                                     "--batch-size", "4", "--epochs", "1", "--skip-ci",
                                     "--json", str(out / "data.json")])
    assert rc == 0
    table = benchmark_reports(out)
    assert len(table) == 6 and (table["unit"] == "volumes/s").all()
    assert table["figure"].str.startswith("loader: ").all()
    assert table["setting"].str.startswith("6 mm 31x37x31, batch 4,").all()
    assert table["command"].iloc[0].startswith("python benchmarks/bench_data.py --grid-mm 6")


def test_bench_end_to_end_writes_a_readable_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(PROJECT_ROOT)
    rc = _script("bench_end_to_end").main([
        "--device", "cpu", "--grid-mm", "6", "--widths", "4,4,8,8", "--n-images", "8",
        "--unique", "4", "--batch-size", "4", "--warmup", "0", "--steps", "1",
        "--workers", "0", "--threads", "1", "--json", str(tmp_path / "e2e.json")])
    assert rc == 0
    report = json.loads((tmp_path / "e2e.json").read_text())
    assert report["complete"] and report["device_type"] == "cpu"
    table = benchmark_reports(tmp_path)
    assert {"plain", "brainkit (auto: memmap)", "step only"} <= set(table["figure"])
    assert table["setting"].str.startswith("6 mm 31x37x31, ResNet-18 widths 4,4,8,8, batch 4").all()
    ratios = table[table["unit"] == "ratio"]
    assert len(ratios) == 3 and (ratios["value"] > 0).all()


def test_bench_book_counts_each_chapters_work_from_the_progress_lines():
    bench = _script("bench_book")
    log = "\n".join([
        "Running Jupyter-Book",
        "[brainkit 13:40:00] train l1, 10 images, seed 0: done in 3 s",   # before any chapter
        "/book/chapters/data.md: Executing notebook using local CWD [mystnb]",
        "[brainkit 13:42:54] train l1, 401 images, seed 0 ...",
        "[brainkit 13:43:28] train l1, 401 images, seed 0: done in 33 s",
        "\x1b[01m[brainkit 13:43:29] train l1, 401 images, seed 1: done in 29 s\x1b[39;49;00m",
        "[brainkit 13:44:00] probe openbhb_challenge, 170 images: done in 2 s",
        "/book/chapters/data.md: Executed notebook in 50.10 seconds [mystnb]",
        "/book/chapters/predict.md: Executing notebook using local CWD [mystnb]",
        "[brainkit 13:55:11] example l1, seed 0: done in 37 s",
    ])
    work = bench.work_by_chapter(log)
    assert work == {
        "data": {"train l1": {"n": 2, "seconds": 62.0},
                 "probe openbhb_challenge": {"n": 1, "seconds": 2.0}},
        "predict": {"example l1": {"n": 1, "seconds": 37.0}}}
    assert bench.work_by_chapter("no progress lines here") == {}
