"""Loader throughput on the CPU: the packed store against float32 volumes; ``ci`` figures.

Part 1, loaders. A synthetic cohort (``--unique`` rendered images repeated to ``--n-images``)
is written as one float32 ``.npy`` file per image, as a saved cohort (``images.npy``, float32,
memory-mapped) and packed (``uint8`` and ``float16``, :func:`brainkit.data.packed.pack_cohort`).
Each loader delivers shuffled batches of ``--batch-size`` float32 full-grid volumes
``(B, 1, X, Y, Z)`` on the CPU, with no model behind it; the figure is volumes per second:

``npy files``       ``np.load`` of one file per image, stacked (the plain loop's reading);
``float32 memmap``  ``Cohort.images(batch)`` of the saved cohort;
``uint8 memmap``    :class:`brainkit.data.loaders.HostBatches`: read the cropped uint8 boxes,
                    decode and un-crop (what ``fit`` does, here all on the CPU);
``+ prefetch``      the same with the next batch read in a background thread, as ``fit``'s
                    ``prefetch`` (reading overlaps decoding);
``float16 memmap``  as ``uint8 memmap`` with the float16 store;
``uint8 resident``  :class:`brainkit.data.loaders.ResidentBatches` on the CPU (gather, decode).

Each loader runs ``--epochs`` passes and the median and best pass are printed; ``warm``
passes read from the page cache; ``cold`` passes first drop this benchmark's own files from
the page cache (``posix_fadvise DONTNEED``; other files are untouched), so they read from the
disk (or from the hypervisor's cache on a virtual machine, which then looks warm).

Part 2, the ``ci`` profile (6 mm, narrow ResNet-18, batch 16, 2 views): the time to generate
its synthetic merged cohort, and one training epoch of :func:`brainkit.train.fit` over all of
its images, from the in-memory float32 cohort and from its packed copy.

Examples
--------
::

    python benchmarks/bench_data.py                              # 1.5 mm, about a minute
    python benchmarks/bench_data.py --threads 1                  # on a shared machine
    python benchmarks/bench_data.py --grid-mm 6 --n-images 256 --skip-ci
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from brainkit.data import Cohort, make_cohort, make_merged
from brainkit.data.loaders import HostBatches, ResidentBatches
from brainkit.data.packed import pack_cohort
from brainkit.experiments.speed import report_header, time_loader


def _evict(paths) -> None:
    """Drop these files' pages from the page cache (only clean pages; ours only)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _time(load, n: int, batch: int, epochs: int, files, cold: bool,
          prefetch: bool = False) -> tuple[float, float]:
    """Median and best volumes/s over ``epochs`` passes; ``cold`` passes first evict
    ``files`` from the page cache."""
    return time_loader(load, n, batch, epochs=epochs, prefetch=prefetch,
                       before_epoch=(lambda: _evict(files)) if cold else None)


def loaders(args, root: Path) -> dict:
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_cohort("openbhb", n_subjects=args.unique, grid_mm=args.grid_mm, seed=0)
    generate_s = time.perf_counter() - t
    source = np.arange(args.n_images) % len(base)
    table = base.table.iloc[source].reset_index(drop=True)
    copy = (np.arange(args.n_images) // len(base)).astype(str)
    table["image_id"] = table["image_id"] + "-" + copy
    images = base.images()
    npy = []
    (root / "npy").mkdir()
    for i, j in enumerate(source):
        npy.append(root / "npy" / f"{i:06d}.npy")
        np.save(npy[-1], images[j])
    Cohort(table, images[source], base.affine, check_finite=False).save(root / "f32")
    float32 = Cohort.load(root / "f32")
    u8 = pack_cohort(float32, root / "u8", "uint8")
    f16 = pack_cohort(float32, root / "f16", "float16")
    grid = base.grid_shape
    print(f"{args.n_images} images ({len(base)} rendered in {generate_s:.1f} s) on the "
          f"{args.grid_mm} mm grid {grid}; batch {args.batch_size}; {args.epochs} epoch(s) "
          "per figure", flush=True)
    sizes = {"npy files": 4 * int(np.prod(grid)), "float32 memmap": 4 * int(np.prod(grid)),
             "uint8 memmap": u8.packed_store.nbytes / len(u8),
             "float16 memmap": f16.packed_store.nbytes / len(f16)}
    print(f"bytes per image: float32 {sizes['npy files'] / 2**20:.2f} MiB, uint8 packed "
          f"{sizes['uint8 memmap'] / 2**20:.2f} MiB, float16 packed "
          f"{sizes['float16 memmap'] / 2**20:.2f} MiB (box {u8.packed_store.box})", flush=True)

    def npy_load(idx):
        return torch.from_numpy(np.stack([np.load(npy[i]) for i in idx])).unsqueeze(1)

    def images_load(idx):
        return torch.from_numpy(float32.images(idx)).unsqueeze(1)

    host_u8, host_f16 = HostBatches(u8, "cpu"), HostBatches(f16, "cpu")
    resident = ResidentBatches(u8, "cpu")
    rows = [
        ("npy files", npy_load, npy, False),
        ("float32 memmap", images_load, [root / "f32" / "images.npy"], False),
        ("uint8 memmap", host_u8.load, [root / "u8" / "packed.npy"], False),
        ("uint8 memmap + prefetch", (host_u8.fetch, host_u8.to_device),
         [root / "u8" / "packed.npy"], True),
        ("float16 memmap", host_f16.load, [root / "f16" / "packed.npy"], False),
        ("uint8 resident", resident.load, [], False),
    ]
    results = []
    print("volumes/s per pass, median (best); torch with "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    print(f"{'loader':<26} {'MiB/image':>9} {'warm':>17} {'cold':>17}", flush=True)
    nan = (float("nan"), float("nan"))
    for name, load, files, prefetch in rows:
        warm = _time(load, args.n_images, args.batch_size, args.epochs, files, False, prefetch)
        can_evict = hasattr(os, "posix_fadvise")  # Linux; elsewhere no cold figures
        cold = _time(load, args.n_images, args.batch_size, args.epochs, files, True, prefetch) \
            if files and can_evict else nan
        size = sizes.get(name.replace(" + prefetch", "").replace("resident", "memmap"))
        results.append({"loader": name, "mib_per_image": size / 2**20,
                        "warm_volumes_per_s_median": warm[0], "warm_volumes_per_s_best": warm[1],
                        "cold_volumes_per_s_median": cold[0], "cold_volumes_per_s_best": cold[1]})
        print(f"{name:<26} {size / 2**20:>9.2f} {warm[0]:>8.1f} ({warm[1]:>6.1f}) "
              f"{cold[0]:>8.1f} ({cold[1]:>6.1f})", flush=True)
    return {"grid": list(grid), "generate_s": generate_s, "loaders": results}


def ci_profile(args, root: Path) -> dict:
    from brainkit.experiments.profiles import get_profile
    from brainkit.models import build_model
    from brainkit.train import fit

    p = get_profile("ci")
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort = make_merged(p.cohort_sizes, grid_mm=p.grid_mm, seed=0)
    generate_s = time.perf_counter() - t
    t = time.perf_counter()
    packed = pack_cohort(cohort, root / "ci-u8")
    pack_s = time.perf_counter() - t
    print(f"ci profile: {cohort}; generated in {generate_s:.1f} s, packed in {pack_s:.2f} s",
          flush=True)
    out = {"n_images": len(cohort), "grid_mm": p.grid_mm, "generate_s": generate_s,
           "pack_s": pack_s, "epoch": []}
    for name, c in (("float32 in memory", cohort), ("uint8 packed", packed)):
        torch.manual_seed(0)
        model = build_model("contrastive", depth=p.depth, widths=p.widths,
                            head_dims=p.head_dims)
        loss_kwargs = {"sigma": p.sigma}
        t = time.perf_counter()
        result = fit(model, c, "exp", loss_kwargs=loss_kwargs, out_dir=root / f"ci-{len(out['epoch'])}",
                     epochs=1, batch_size=p.batch_size, lr=p.lr, n_views=p.n_views,
                     augmentation=p.augmentation, progress=False, handle_signals=False)
        wall = time.perf_counter() - t
        row = result.metrics.iloc[0]
        out["epoch"].append({"cohort": name, "epoch_s": float(row["seconds"]), "wall_s": wall,
                             "volumes_per_s": float(row["volumes_per_s"]),
                             "data_path": result.data_path})
        print(f"ci epoch ({name}, {result.data_path}): {row['seconds']:.1f} s "
              f"({row['volumes_per_s']:.1f} volumes/s; {wall:.1f} s with setup and "
              "checkpoint)", flush=True)
    return out


def figures(report: dict, args) -> list[dict]:
    """The flat figure list of the report (see brainkit.experiments.speed)."""
    grid = "x".join(map(str, report["loaders"]["grid"]))
    setting = (f"{args.grid_mm:g} mm {grid}, batch {args.batch_size}, page cache warm, "
               "median pass")
    out = [{"figure": f"loader: {row['loader']}", "value": row["warm_volumes_per_s_median"],
            "unit": "volumes/s", "setting": setting} for row in report["loaders"]["loaders"]]
    ci = report.get("ci")
    if ci:
        setting = f"ci profile, {ci['n_images']} images, {ci['grid_mm']:g} mm"
        out.append({"figure": "ci: generate the synthetic cohort", "value": ci["generate_s"],
                    "unit": "s", "setting": setting})
        out.append({"figure": "ci: pack it (uint8)", "value": ci["pack_s"], "unit": "s",
                    "setting": setting})
        for row in ci["epoch"]:
            out.append({"figure": f"ci: one training epoch, {row['cohort']}",
                        "value": row["epoch_s"], "unit": "s",
                        "setting": f"{setting}, data path {row['data_path']}"})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid-mm", type=float, default=1.5, choices=(1.5, 3, 6))
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--unique", type=int, default=8, help="images rendered (repeated to "
                                                              "--n-images)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="passes per figure")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's default). On a shared "
                             "machine use 1: OpenMP threads on oversubscribed cores slow "
                             "every torch operation many times over")
    parser.add_argument("--skip-ci", action="store_true", help="skip part 2 (ci profile)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    for flag in ("n_images", "unique", "batch_size", "epochs", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size > args.n_images:
        parser.error("--batch-size must not exceed --n-images")
    args.unique = min(args.unique, args.n_images)
    print(f"CPU: {os.cpu_count()} cores, torch {torch.__version__} with "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    report = {"benchmark": "bench_data",
              **report_header(None if argv is None else [__file__, *argv]),
              "settings": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        report["loaders"] = loaders(args, root)
        if not args.skip_ci:
            report["ci"] = ci_profile(args, root)
    report["figures"] = figures(report, args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
