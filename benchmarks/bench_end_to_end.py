"""End-to-end training throughput: a plain PyTorch loop against brainkit's defaults.

Everything a training step needs is timed (reading images, augmentation, copies, forward,
loss, backward, optimiser step), in augmented volumes per second, on a synthetic cohort that
the script makes itself in a temporary folder.

Settings
--------
``plain``
    The released code's way: one float32 ``.npy`` file per image, a ``torch.utils.data``
    ``DataLoader`` (shuffled, ``--workers`` worker processes, ``pin_memory`` on CUDA) whose
    workers load each file and augment each view on the CPU, per sample; the step in PyTorch
    defaults (float32, on CUDA with TF32 convolutions as PyTorch allows by default,
    contiguous memory, ``cudnn.benchmark`` off, Adam's default kernels).
``brainkit``
    :func:`brainkit.train.fit` with its defaults on a packed cohort
    (:func:`brainkit.data.packed.pack_cohort`, uint8, cropped, memory-mapped): the
    ``"auto"`` data path (resident on the GPU when it fits, else memory map + prefetch
    thread), batched augmentation on the device, and on CUDA bf16 autocast,
    ``channels_last_3d``, ``cudnn.benchmark`` and fused Adam. ``fit``'s first epoch is the
    warm-up; the later epochs are timed (``fit``'s own ``volumes_per_s``). On CUDA the
    ``"memmap"`` path is timed too (``--paths``).
``step only``
    brainkit's step on tensors already on the device (no data, no augmentation): the ceiling
    the end-to-end figures are compared with.

The cohort holds ``--unique`` rendered images repeated to ``--n-images`` (the data path's cost
does not depend on the content). All files are freshly written, so both loaders read from the
page cache.

Examples
--------
On one GPU, the paper's setting (1.5 mm = 121 x 145 x 121, ResNet-18, batch 32 x 2 views)::

    python benchmarks/bench_end_to_end.py --json e2e.json
    python benchmarks/bench_end_to_end.py --quick --json e2e.json     # about 2 minutes

On a CPU (about a minute on 2 cores; ``--threads 1`` when other work shares the cores)::

    python benchmarks/bench_end_to_end.py --grid-mm 6 --widths 8,16,32,64 --n-images 64 \\
        --steps 5 --threads 1

The script stops starting new phases once ``--time-limit`` seconds have passed and writes the
JSON after every phase, so a run cut short still leaves the phases it finished. The plain and
step-only loops also stop early at the limit; a ``fit`` phase, once started, runs its epochs
(the warm-up epoch and enough timed epochs for ``--steps``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

from brainkit.data import Cohort, augmentation, make_cohort
from brainkit.data.packed import pack_cohort
from brainkit.experiments.speed import report_header
from brainkit.losses import make_loss
from brainkit.models import build_model
from brainkit.train import batch_loss, fit

T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f} s] {message}", flush=True)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _model(args):
    torch.manual_seed(0)
    return build_model("contrastive", depth=args.depth, widths=args.widths,
                       head_dims=args.head_dims)


# --------------------------------------------------------------------------- data
def make_data(args, root: Path) -> dict:
    """Render, tile and write the cohort three ways: per-image .npy files, a saved cohort,
    and its packed copy. Returns paths, ages and timings."""
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_cohort("openbhb", n_subjects=args.unique, grid_mm=args.grid_mm, seed=0)
    generate_s = time.perf_counter() - t
    unique = len(base)
    source = np.arange(args.n_images) % unique
    table = base.table.iloc[source].reset_index(drop=True)
    copy = (np.arange(args.n_images) // unique).astype(str)
    table["image_id"] = table["image_id"] + "-" + copy
    table["subject_id"] = table["subject_id"] + "-" + copy
    images = base.images()
    log(f"rendered {unique} images on the {args.grid_mm} mm grid {base.grid_shape} in "
        f"{generate_s:.1f} s; tiling to {args.n_images}")

    t = time.perf_counter()
    npy_dir = root / "npy"
    npy_dir.mkdir()
    paths = []
    for i, j in enumerate(source):
        path = npy_dir / f"{i:06d}.npy"
        np.save(path, images[j])
        paths.append(str(path))
    npy_s = time.perf_counter() - t

    t = time.perf_counter()
    tiled = Cohort(table, images[source], base.affine, check_finite=False)
    tiled.save(root / "cohort")
    del tiled
    save_s = time.perf_counter() - t

    t = time.perf_counter()
    packed = pack_cohort(Cohort.load(root / "cohort"), root / "packed", "uint8")
    pack_s = time.perf_counter() - t
    store = packed.packed_store
    full = 4 * int(np.prod(base.grid_shape))
    log(f"wrote {args.n_images} .npy files in {npy_s:.1f} s, the cohort in {save_s:.1f} s, "
        f"packed it in {pack_s:.1f} s: box {store.box}, {store.nbytes / len(packed) / 2**20:.2f}"
        f" MiB per image (float32 {full / 2**20:.2f} MiB)")
    return {"paths": paths, "ages": table["age"].to_numpy(np.float64), "packed_dir":
            root / "packed", "grid": base.grid_shape,
            "timings": {"generate_s": generate_s, "unique_images": unique, "write_npy_s": npy_s,
                        "save_cohort_s": save_s, "pack_s": pack_s},
            "packed": {"box": [list(b) for b in store.box], "dtype": store.dtype.name,
                       "mib_per_image": store.nbytes / len(packed) / 2**20,
                       "float32_mib_per_image": full / 2**20}}


class NpyViews(torch.utils.data.Dataset):
    """One float32 .npy file per image; ``n_views`` augmented views made per sample on the
    CPU (in the DataLoader's worker), as the released code does."""

    def __init__(self, paths, ages, name: str, n_views: int):
        self.paths, self.ages, self.n_views = list(paths), np.asarray(ages), n_views
        self.augment = augmentation(name)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        x = torch.from_numpy(np.load(self.paths[i]))[None, None]  # (1, 1, X, Y, Z)
        views = torch.cat([self.augment(x) for _ in range(self.n_views)])  # (V, 1, X, Y, Z)
        return views, torch.tensor(self.ages[i])


# --------------------------------------------------------------------------- measures
def measure_plain(args, data: dict, device: torch.device, deadline: float) -> dict:
    cuda = device.type == "cuda"
    model = _model(args).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-5)
    loss_fn = make_loss("exp", sigma=2.0).to(device)
    ds = NpyViews(data["paths"], data["ages"], args.augmentation, args.views)
    total = args.warmup + args.steps
    sampler = torch.utils.data.RandomSampler(ds, num_samples=total * args.batch_size,
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, sampler=sampler,
                                         num_workers=args.workers, pin_memory=cuda,
                                         drop_last=True,
                                         timeout=300 if args.workers else 0)
    done, start, seconds = 0, None, math.nan
    previous = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        for step, (views, ages) in enumerate(loader):
            if step == args.warmup:
                _sync(device)
                start = time.perf_counter()
            # to the device as the loader delivered it (pinned), then view-major there
            x = views.to(device, non_blocking=cuda)
            x = x.transpose(0, 1).reshape(-1, *views.shape[2:])
            y = ages.repeat(args.views).to(device)
            loss = batch_loss(model, loss_fn, x, y, n_views=args.views, amp=False)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if start is not None:
                done += 1
            if step < args.warmup:
                log(f"plain: warm-up step {step + 1}/{args.warmup}")
            if time.monotonic() > deadline:
                log("plain: time limit reached, stopping early")
                break
        _sync(device)
        if start is not None and done:
            seconds = time.perf_counter() - start
    finally:
        torch.backends.cudnn.benchmark = previous
        del loader
    vps = args.views * args.batch_size * done / seconds if done else math.nan
    out = {"setting": "plain", "volumes_per_s": vps, "timed_steps": done,
           "seconds": seconds, "workers": args.workers, "peak_gib": _peak_gib(device)}
    del model, optimizer
    return out


def measure_brainkit(args, data: dict, device: torch.device, root: Path, data_path: str) -> dict:
    packed = Cohort.load(data["packed_dir"])
    steps_per_epoch = len(packed) // args.batch_size
    timed_epochs = max(1, math.ceil(args.steps / steps_per_epoch))
    model = _model(args)
    out_dir = root / f"run-{data_path}"
    result = fit(model, packed, "exp", loss_kwargs={"sigma": 2.0}, out_dir=out_dir,
                 epochs=1 + timed_epochs, batch_size=args.batch_size, n_views=args.views,
                 augmentation=args.augmentation, device=device, seed=0, drop_last=True,
                 progress=False, handle_signals=False, data_path=data_path)
    m = result.metrics
    timed = m.iloc[1:]
    volumes = args.views * args.batch_size * steps_per_epoch * len(timed)
    seconds = float(timed["seconds"].sum())
    out = {"setting": "brainkit", "data_path": result.data_path, "requested": data_path,
           "volumes_per_s": volumes / seconds, "timed_steps": steps_per_epoch * len(timed),
           "seconds": seconds, "warmup_epoch_s": float(m["seconds"].iloc[0]),
           "amp": result.config["training"]["amp"],
           "channels_last": result.config["training"]["channels_last"],
           "peak_gib": _peak_gib(device)}
    del model, result
    return out


def measure_step_only(args, data: dict, device: torch.device, deadline: float) -> dict:
    cuda = device.type == "cuda"
    fmt = torch.channels_last_3d if cuda else torch.contiguous_format
    model = _model(args).to(device).to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-5,
                                 **({"fused": True} if cuda else {}))
    loss_fn = make_loss("exp", sigma=2.0).to(device)
    x = torch.rand((args.views * args.batch_size, 1) + tuple(data["grid"]), device=device)
    x = x.contiguous(memory_format=fmt)
    y = (torch.rand(args.batch_size, device=device, dtype=torch.float64) * 80 + 6) \
        .repeat(args.views)
    done, seconds = 0, math.nan
    previous = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = cuda
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                _sync(device)
                start = time.perf_counter()
            loss = batch_loss(model, loss_fn, x, y, n_views=args.views, amp=cuda)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += step >= args.warmup
            if time.monotonic() > deadline:
                log("step only: time limit reached, stopping early")
                break
        _sync(device)
        if done:
            seconds = time.perf_counter() - start
    finally:
        torch.backends.cudnn.benchmark = previous
    out = {"setting": "step only", "volumes_per_s": args.views * args.batch_size * done / seconds
           if done else math.nan, "timed_steps": done, "seconds": seconds, "amp": cuda,
           "channels_last": cuda, "peak_gib": _peak_gib(device)}
    del model, optimizer, x
    return out


# --------------------------------------------------------------------------- main
def _write_json(path: str | None, report: dict) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(report, fh, indent=2, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def _label(result: dict) -> str:
    label = result["setting"]
    if "data_path" in result:
        label += f" ({result['requested']}" + (
            f": {result['data_path']})" if result["requested"] != result["data_path"] else ")")
    return label


def figures(report: dict, args) -> list[dict]:
    """The flat figure list of the report (see brainkit.experiments.speed)."""
    grid = "x".join(map(str, report["data"]["grid"])) if "data" in report else "?"
    setting = (f"{args.grid_mm:g} mm {grid}, ResNet-{args.depth} widths "
               f"{','.join(map(str, args.widths))}, batch {args.batch_size} x {args.views} views")
    out = [{"figure": _label(r), "value": r["volumes_per_s"], "unit": "volumes/s",
            "setting": setting} for r in report["results"]]
    names = {"brainkit_over_plain": "brainkit / plain (GPU target >= 1.4)",
             "brainkit_over_step_only": "brainkit / step only (GPU target >= 0.9)",
             "plain_over_step_only": "plain / step only"}
    out += [{"figure": names[k], "value": v, "unit": "ratio", "setting": setting}
            for k, v in report.get("ratios", {}).items()]
    return out


def build_parser() -> argparse.ArgumentParser:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--grid-mm", type=float, default=1.5, choices=(1.5, 3, 6),
                        help="synthetic grid (1.5 = 121x145x121)")
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--widths", type=_ints, default=(64, 128, 256, 512))
    parser.add_argument("--head-dims", type=_ints, default=None,
                        help="default (512, 128) for ResNet-18 widths, else (w, w // 2) for "
                             "the last width w")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--augmentation", default="crop", help="released --tf setting")
    parser.add_argument("--n-images", type=int, default=None,
                        help="cohort size (default 256; 128 with --quick)")
    parser.add_argument("--unique", type=int, default=None,
                        help="images actually rendered, repeated to --n-images (default "
                             "min(32, n-images); 16 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="plain loop and step-only "
                        "warm-up steps (default 5; 3 with --quick)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps (default 20; 8 with --quick); fit times whole "
                             "epochs after a warm-up epoch, at least this many steps")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader workers of the plain loop (default min(8, cores))")
    parser.add_argument("--paths", default=None,
                        help="fit data paths to time, comma-separated of auto,memmap,resident "
                             "(default auto,memmap on CUDA, auto on CPU; auto with --quick)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads of the main process (default: torch's "
                             "default). On a shared CPU use 1: OpenMP threads on "
                             "oversubscribed cores slow every step many times over")
    parser.add_argument("--quick", action="store_true",
                        help="smaller cohort and fewer steps (one GPU: about 2 minutes)")
    parser.add_argument("--time-limit", type=float, default=540.0,
                        help="seconds after which no new phase starts (default 540)")
    parser.add_argument("--json", default=None, help="write the results here (after each "
                                                     "phase)")
    parser.add_argument("--workdir", default=None,
                        help="where to write the data (default: a temporary folder, removed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    args.n_images = args.n_images or (128 if args.quick else 256)
    args.unique = min(args.unique or (16 if args.quick else 32), args.n_images)
    if args.warmup is None:
        args.warmup = 3 if args.quick else 5
    if args.steps is None:
        args.steps = 8 if args.quick else 20
    for flag in ("batch_size", "views", "n_images", "unique", "steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.workers < 0:
        parser.error("--warmup and --workers must be >= 0")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.head_dims is None:
        w = args.widths[-1]
        args.head_dims = (512, 128) if w == 512 else (w, max(1, w // 2))
    if args.paths is None:
        args.paths = "auto,memmap" if device.type == "cuda" and not args.quick else "auto"
    paths = list(dict.fromkeys(args.paths.split(",")))  # each once, in the order given
    if set(paths) - {"auto", "memmap", "resident"}:
        parser.error(f"--paths: choose from auto, memmap, resident; got {args.paths!r}")
    if args.n_images < args.batch_size:
        parser.error(f"--n-images ({args.n_images}) must be at least --batch-size "
                     f"({args.batch_size})")
    deadline = time.monotonic() + args.time_limit

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} thread(s)"
    report = {"benchmark": "bench_end_to_end",
              **report_header(None if argv is None else [__file__, *argv]),
              "device": name, "device_type": device.type,
              "settings": {k: v for k, v in vars(args).items() if k != "json"},
              "results": [], "errors": [], "complete": False, "figures": []}
    log(f"device: {name}; torch {torch.__version__}; {os.cpu_count()} cores")
    log(f"ResNet-{args.depth} widths {args.widths}, head {args.head_dims}; {args.grid_mm} mm; "
        f"batch {args.batch_size} x {args.views} views; augmentation {args.augmentation!r}; "
        f"{args.n_images} images ({args.unique} unique); {args.warmup} warm-up + {args.steps} "
        f"timed steps; time limit {args.time_limit:.0f} s")

    def phase(label: str, fn, *fargs):
        if time.monotonic() > deadline:
            log(f"{label}: skipped (time limit)")
            report["errors"].append({"phase": label, "error": "skipped: time limit"})
            return None
        log(f"{label}: start")
        try:
            out = fn(*fargs)
        except Exception as err:  # a benchmark phase failing must not lose the others
            log(f"{label}: FAILED {type(err).__name__}: {err}")
            traceback.print_exc()
            report["errors"].append({"phase": label, "error": f"{type(err).__name__}: {err}"})
            out = None
        _free(device)
        if out is not None and "volumes_per_s" in out:
            report["results"].append(out)
            log(f"{label}: {out['volumes_per_s']:.1f} volumes/s")
        report["figures"] = figures(report, args)
        _write_json(args.json, report)
        return out

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        data = phase("data", make_data, args, root)
        if data is None:
            return 1
        report["data"] = {"grid": list(data["grid"]), "timings": data["timings"],
                          "packed": data["packed"]}
        plain = phase("plain", measure_plain, args, data, device, deadline)
        fits = [phase(f"brainkit ({p})", measure_brainkit, args, data, device, root, p)
                for p in paths]
        step = phase("step only", measure_step_only, args, data, device, deadline)

    print()
    print(f"{'setting':<24} {'volumes/s':>10} {'timed steps':>12} {'peak GiB':>9}")
    for r in report["results"]:
        label = _label(r)
        peak = "" if r.get("peak_gib") is None else f"{r['peak_gib']:.2f}"
        print(f"{label:<24} {r['volumes_per_s']:>10.1f} {r['timed_steps']:>12} {peak:>9}")
    ratios = {}
    best = max((f for f in fits if f), key=lambda f: f["volumes_per_s"], default=None)
    if best and plain:
        ratios["brainkit_over_plain"] = best["volumes_per_s"] / plain["volumes_per_s"]
        print(f"brainkit ({best['data_path']}) / plain: {ratios['brainkit_over_plain']:.2f}x")
    if best and step:
        ratios["brainkit_over_step_only"] = best["volumes_per_s"] / step["volumes_per_s"]
        print(f"brainkit ({best['data_path']}) / step only: "
              f"{ratios['brainkit_over_step_only']:.2f} (1.0 = the data path costs nothing)")
    if plain and step:
        ratios["plain_over_step_only"] = plain["volumes_per_s"] / step["volumes_per_s"]
    report["ratios"] = ratios
    report["figures"] = figures(report, args)
    report["complete"] = not report["errors"]
    report["elapsed_s"] = time.monotonic() - T0
    _write_json(args.json, report)
    log(f"done in {report['elapsed_s']:.0f} s" + ("" if report["complete"] else
                                                    f"; {len(report['errors'])} phase(s) "
                                                    "failed or skipped"))
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
