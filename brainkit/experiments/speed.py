"""Speed, measured: a profile's training step, the data loaders, the machine, and the reports
that the scripts in ``benchmarks/`` write.

Everything here runs in seconds at the ``ci`` profile, so the book measures the machine it is
built on; the paper-scale figures (1.5 mm, ResNet-18, one GPU) come from the benchmark scripts,
whose JSON reports :func:`benchmark_reports` reads back. Each report carries the command that
produced it and the machine it ran on (:func:`report_header`), and a flat list of
``figures`` (``figure``, ``value``, ``unit``, optionally ``setting``) so that reports of
different scripts line up in one table.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .profiles import Profile, get_profile

__all__ = [
    "YARDSTICKS",
    "TARGETS","benchmark_reports", "loader_throughput", "machine", "report_header",
           "step_throughput", "time_loader"]

#: Reference points of the design notes (shared/DESIGN.md, "Performance design"), measured
#: on one H200 with a plain PyTorch loop at 1.5 mm, ResNet-18, batch 32 x 2 views
#: (volumes per second).
YARDSTICKS = {"step_fp32_defaults": 274, "step_bf16_channels_last": 386,
              "end_to_end_cpu_loader": 216, "cpu_loader_workers": 8}
#: The speed targets on one GPU: brainkit's ``fit`` end to end at least this many times the
#: plain loop, and at least this fraction of its own step-only rate.
TARGETS = {"end_to_end_vs_plain": 1.4, "end_to_end_vs_step": 0.90}

#: Columns of :func:`benchmark_reports`.
REPORT_COLUMNS = ("benchmark", "figure", "value", "unit", "setting", "device", "machine",
                  "date", "command", "file")


def step_throughput(profile: str | Profile | None = None, *, steps: int = 5, warmup: int = 2,
                    device: str | None = None, loss: str = "exp") -> dict:
    """Volumes per second of one contrastive training step of ``profile`` (data on device).

    Random volumes on the profile's grid, the profile's model and batch (two views per image),
    Adam; the same settings as :func:`brainkit.train.fit` on that device (bf16 autocast on
    CUDA; channels-last and fused Adam on CUDA and the CPU). The data path is excluded: this is
    the step-only rate.

    Returns
    -------
    dict
        ``device``, ``grid``, ``batch_volumes``, ``volumes_per_s``, ``seconds_per_step``.
    """
    import torch

    from ..data.grid import mni_grid
    from ..losses import make_loss
    from ..models import build_model

    profile = get_profile(profile)
    dev = torch.device(device or profile.resolved_device())
    shape, affine = mni_grid(profile.grid_mm)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    model = build_model(**profile.model_config("contrastive", grid=(shape, affine))).to(dev)
    x = torch.rand(profile.n_views * profile.batch_size, 1, *shape, device=dev)
    native = dev.type in ("cuda", "cpu")
    if native:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = torch.rand(profile.batch_size, device=dev).repeat(profile.n_views) * 80
    opt = torch.optim.Adam(model.parameters(), lr=profile.lr, fused=native or None)
    loss_fn = make_loss(loss, sigma=profile.sigma, temperature=profile.temperature)
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
            z = model(x)
        loss_fn(z.float(), y).backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    per_step = float(np.median(times))
    return {"device": str(dev), "grid": "x".join(map(str, shape)), "batch_volumes": len(x),
            "volumes_per_s": len(x) / per_step, "seconds_per_step": per_step}


# --------------------------------------------------------------------------- the machine
def _cpuinfo(path: str = "/proc/cpuinfo") -> dict:
    """The first processor's fields of ``/proc/cpuinfo`` (``{}`` where there is none)."""
    info: dict = {}
    try:
        with open(path) as fh:
            for line in fh:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def _cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def _cpu_details(path: str = "/proc/cpuinfo") -> dict:
    """The CPU's family / model and whether it has native bf16, from ``/proc/cpuinfo``.

    Cloud hosts report one model name ("AMD EPYC") for CPUs generations apart: on a Zen 2
    without AVX-512, bf16 autocast ran a ci step ~8x slower than float32, where a host with
    native bf16 ran it faster, so the reports say which kind of CPU measured them.
    """
    info = _cpuinfo(path)
    flags = set(info.get("flags", "").split())
    ident = (f"family {info['cpu family']} model {info['model']}"
             if "cpu family" in info and "model" in info else None)
    return {"cpu_id": ident,
            "cpu_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}) if flags else None}


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):
        return None


def machine() -> dict:
    """What this process runs on: CPU, cores, memory, GPUs, torch and Python versions.

    Returns
    -------
    dict
        ``cpu`` (model name), ``cpu_id`` (``"family F model M"`` on Linux, else ``None``),
        ``cpu_capability`` (torch's vector instruction set, e.g. ``"AVX2"``), ``cpu_bf16``
        (native bf16 instructions; ``None`` if unknown), ``cores`` (logical, as
        ``os.cpu_count``), ``memory_gib``, ``gpu`` (``"none"``, or the CUDA device names joined
        by ``" + "``), ``gpu_memory_gib`` (of device 0, or ``None``), ``torch``,
        ``torch_threads``, ``python``, ``platform``.
    """
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None

    gpus, gpu_mem = "none", None
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        gpus = " + ".join(torch.cuda.get_device_name(i) for i in range(n))
        gpu_mem = torch.cuda.get_device_properties(0).total_memory / 2**30
    mem = _memory_gib()
    return {"cpu": _cpu_model(), **_cpu_details(), "cpu_capability": capability,
            "cores": os.cpu_count(),
            "memory_gib": None if mem is None else round(mem, 1), "gpu": gpus,
            "gpu_memory_gib": None if gpu_mem is None else round(gpu_mem, 1),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}


def report_header(argv: list[str] | None = None) -> dict:
    """The part every benchmark report starts with: the command, the date, the machine.

    Parameters
    ----------
    argv : list of str, optional
        The command line (default ``sys.argv``); the script's path is written relative to
        the working directory when it lies below it.
    """
    from .. import __version__

    argv = list(sys.argv if argv is None else argv)
    if argv:
        script = Path(argv[0])
        try:
            argv[0] = str(script.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            pass
    return {"command": "python " + shlex.join(argv) if argv else "",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "brainkit": __version__, "machine": machine()}


def benchmark_reports(folder: str | os.PathLike | None = None):
    """The figures of every benchmark report (``*.json``) in ``folder``, one row each.

    Parameters
    ----------
    folder : path-like, optional
        Default ``benchmarks/results`` in the project.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`REPORT_COLUMNS`: the script (``benchmark``), the figure's name, value,
        unit and setting (what was measured: grid, model, batch; ``""`` when the report
        gives none), the device it ran on (the GPU, else ``"CPU"``), a one-line machine
        description, the date, the command and the report's file name. Sorted by file, in
        each report's own order. Empty (with these columns) when the folder holds no report.

    Raises
    ------
    FileNotFoundError
        ``folder`` does not exist.
    ValueError
        A report is not JSON, or lacks ``command``, ``machine`` or ``figures``, or a figure
        lacks ``figure``, ``value`` or ``unit`` (the message names the file and the entry).
    """
    import pandas as pd

    from ..data.paths import PROJECT_ROOT

    folder = Path(folder) if folder is not None else PROJECT_ROOT / "benchmarks" / "results"
    if not folder.is_dir():
        raise FileNotFoundError(f"no benchmark reports folder at {folder}")
    rows = []
    for path in sorted(folder.glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a JSON benchmark report ({err})") from None
        missing = [k for k in ("command", "machine", "figures") if k not in report]
        if missing:
            raise ValueError(f"{path}: a benchmark report needs {missing} (write it with "
                             "brainkit.experiments.speed.report_header and a 'figures' list)")
        m = report["machine"]
        gpu = m.get("gpu", "none")
        device = "CPU" if gpu == "none" or report.get("device_type") == "cpu" else gpu
        kind = ", ".join(str(m[k]) for k in ("cpu_id", "cpu_capability") if m.get(k))
        described = (f"{m.get('cpu', '?')}" + (f" ({kind})" if kind else "")
                     + f", {m.get('cores', '?')} cores, "
                     f"{m.get('memory_gib', '?')} GiB" + ("" if gpu == "none" else f"; {gpu}")
                     + f"; torch {m.get('torch', '?')}")
        for i, fig in enumerate(report["figures"]):
            absent = [k for k in ("figure", "value", "unit") if k not in fig]
            if absent:
                raise ValueError(f"{path}: figures[{i}] lacks {absent}")
            rows.append({"benchmark": report.get("benchmark", path.stem),
                         "figure": fig["figure"], "value": float(fig["value"]),
                         "unit": fig["unit"], "setting": fig.get("setting", ""),
                         "device": device, "machine": described,
                         "date": report.get("date", ""), "command": report["command"],
                         "file": path.name})
    return pd.DataFrame(rows, columns=list(REPORT_COLUMNS))


# --------------------------------------------------------------------------- loaders
def time_loader(load, n: int, batch_size: int, *, epochs: int = 3, prefetch: bool = False,
                before_epoch=None) -> tuple[float, float]:
    """Volumes per second of a loader over shuffled passes: (median pass, best pass).

    Parameters
    ----------
    load : callable or (callable, callable)
        ``load(indices) -> tensor`` whose first dimension is the batch; with ``prefetch``, a
        pair ``(fetch, to_device)``, and the next batch's ``fetch`` runs in a background
        thread while this one's ``to_device`` runs (as :func:`brainkit.train.fit` does).
    n : int
        Images to draw from; each pass is a permutation (seeded by the pass number) cut into
        ``n // batch_size`` full batches.
    batch_size : int
    epochs : int, default 3
        Passes; on a shared machine the best pass is the least disturbed.
    before_epoch : callable, optional
        Called before each pass, outside the timing (e.g. to drop files from the page cache).
    """
    if batch_size < 1 or n < batch_size:
        raise ValueError(f"need 1 <= batch_size <= n, got batch_size={batch_size}, n={n}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    rates = []
    for epoch in range(epochs):
        if before_epoch is not None:
            before_epoch()
        order = np.random.default_rng(epoch).permutation(n)
        batches = [order[s:s + batch_size] for s in range(0, n - batch_size + 1, batch_size)]
        volumes = 0
        start = time.perf_counter()
        if prefetch:
            fetch, to_device = load
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = pool.submit(fetch, batches[0])
                for i in range(len(batches)):
                    fetched = pending.result()
                    if i + 1 < len(batches):
                        pending = pool.submit(fetch, batches[i + 1])
                    volumes += to_device(fetched).shape[0]
        else:
            for b in batches:
                volumes += load(b).shape[0]
        _sync_all()
        rates.append(volumes / (time.perf_counter() - start))
    return float(np.median(rates)), float(np.max(rates))


def _sync_all() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def loader_throughput(cohort, *, batch_size: int = 32, epochs: int = 3,
                      device: str = "cpu", workdir: str | os.PathLike | None = None):
    """How fast each of brainkit's data paths delivers training batches of ``cohort``.

    The cohort is written as one float32 ``.npy`` file per image, saved as float32
    (memory-mapped, as :meth:`Cohort.save` writes it) and packed as uint8
    (:func:`brainkit.data.packed.pack_cohort`) in a temporary folder; each loader then delivers shuffled float32 full-grid batches ``(B, 1, X, Y, Z)`` on ``device``
    with no model behind it (:func:`time_loader`).

    Parameters
    ----------
    cohort : brainkit.data.Cohort
        With images (float or packed).
    batch_size : int, default 32
        Capped at the cohort's size.
    epochs : int, default 3
    device : str, default "cpu"
    workdir : path-like, optional
        Where the temporary copies go (default: the system's temporary folder).

    Returns
    -------
    pandas.DataFrame
        One row per loader, indexed by name: ``float32 .npy files`` (one ``np.load`` per
        image, as the released code reads), ``float32 memmap`` (the saved cohort),
        ``uint8 memmap`` (the packed store read on the host, decoded on ``device``), ``uint8
        memmap + prefetch`` (the next batch read in a background thread, as ``fit`` does)
        and ``uint8 resident`` (the packed store held on ``device``). Columns
        ``mib_per_image`` (stored bytes per image), ``volumes_per_s`` (median pass),
        ``volumes_per_s_best`` and ``vs_npy`` (the median rate over the ``.npy`` files').
    """
    import pandas as pd
    import torch

    from ..data import Cohort
    from ..data.loaders import HostBatches, ResidentBatches
    from ..data.packed import pack_cohort

    if getattr(cohort, "grid_shape", None) is None:
        raise ValueError("loader_throughput needs a cohort with images (this one is "
                         "table-only)")
    n = len(cohort)
    batch_size = min(batch_size, n)
    voxels = int(np.prod(cohort.grid_shape))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        plain = cohort
        if getattr(cohort, "packed_store", None) is not None:
            plain = Cohort(cohort.table, cohort.images(), cohort.affine, check_finite=False)
        plain.save(root / "float32")
        float32 = Cohort.load(root / "float32")
        u8 = pack_cohort(float32, root / "uint8", "uint8")
        host = HostBatches(u8, device)
        resident = ResidentBatches(u8, device)

        images = float32.images()
        (root / "npy").mkdir()
        files = [root / "npy" / f"{i:06d}.npy" for i in range(n)]
        for i, path in enumerate(files):
            np.save(path, images[i])

        def npy_load(idx):
            return torch.from_numpy(np.stack([np.load(files[i]) for i in idx])) \
                .unsqueeze(1).to(device)

        def float32_load(idx):
            return torch.from_numpy(float32.images(idx)).unsqueeze(1).to(device)

        float32_mib = 4 * voxels / 2**20
        packed_mib = u8.packed_store.nbytes / n / 2**20
        loaders = [("float32 .npy files", npy_load, False, float32_mib),
                   ("float32 memmap", float32_load, False, float32_mib),
                   ("uint8 memmap", host.load, False, packed_mib),
                   ("uint8 memmap + prefetch", (host.fetch, host.to_device), True, packed_mib),
                   ("uint8 resident", resident.load, False, packed_mib)]
        rows = []
        for name, load, prefetch, mib in loaders:
            median, best = time_loader(load, n, batch_size, epochs=epochs, prefetch=prefetch)
            rows.append({"loader": name, "mib_per_image": mib, "volumes_per_s": median,
                         "volumes_per_s_best": best})
    table = pd.DataFrame(rows).set_index("loader")
    table["vs_npy"] = table["volumes_per_s"] / table.loc["float32 .npy files", "volumes_per_s"]
    return table
