"""Training-step throughput: PyTorch defaults against what brainkit's ``fit`` uses.

Measures augmented volumes per second through one training step (forward of all views in one
pass, the exp loss, backward, Adam step) of a 3D ResNet with its projection head, on
synthetic tensors already resident on the device (no data loading, no augmentation): the
step alone, as in DESIGN.md's performance notes.

Settings
--------
``defaults``
    PyTorch defaults: float32 (on CUDA, convolutions use TF32 as PyTorch allows by default),
    contiguous memory, ``cudnn.benchmark`` off, Adam with its default (foreach) kernels.
    Both settings train brainkit's model, so on the CPU both use the CPU forms of its stem
    and block convolutions (:class:`~brainkit.models.StemConv3d`,
    :class:`~brainkit.models.BlockConv3d`).
``brainkit``
    What :func:`brainkit.train.fit` uses on the device: on CUDA, bf16 autocast for the forward
    pass (loss in float32), ``channels_last_3d`` model and inputs, ``cudnn.benchmark``, fused
    Adam; on the CPU, float32 with ``channels_last_3d`` and fused Adam (bf16 without native
    CPU support is ~8x slower).

Examples
--------
On a GPU, the paper's setting (1.5 mm, ResNet-18, batch 32 x 2 views)::

    python benchmarks/bench_train.py

On a CPU, a narrow network on the 6 mm grid (under a minute on 2 cores)::

    python benchmarks/bench_train.py --device cpu --grid-mm 6 --widths 8,16,32,64 \\
        --head-dims 64,32 --warmup 1 --steps 3

The ``ci`` profile's step as a book worker runs it (one thread, batch 16, one view)::

    python benchmarks/bench_train.py --device cpu --threads 1 --grid-mm 6 \\
        --widths 8,16,32,64 --head-dims 64,32 --batch-size 16 --views 1 --warmup 3 --steps 12
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from brainkit.data.grid import mni_grid
from brainkit.losses import make_loss
from brainkit.models import build_model
from brainkit.experiments.speed import report_header
from brainkit.train import batch_loss

SETTINGS = ("defaults", "brainkit")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(setting: str, *, device: torch.device, grid: tuple[int, int, int], depth: int,
            widths: tuple[int, ...], head_dims: tuple[int, ...], batch_size: int, n_views: int,
            warmup: int, steps: int) -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones.

    Returns
    -------
    dict
        ``setting``, ``volumes_per_s``, ``ms_per_step`` and ``peak_gib`` (CUDA only, else NaN).
    """
    tuned = setting == "brainkit"
    cuda = device.type == "cuda"
    previous = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = tuned and cuda
        torch.manual_seed(0)
        model = build_model("contrastive", depth=depth, widths=widths,
                            head_dims=head_dims).to(device)
        memory_format = torch.channels_last_3d if tuned else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-5,
                                     **({"fused": True} if tuned else {}))
        loss_fn = make_loss("exp", sigma=2.0).to(device)
        x = torch.rand((n_views * batch_size, 1) + tuple(grid), device=device)
        x = x.contiguous(memory_format=memory_format)
        y = (torch.rand(batch_size, device=device, dtype=torch.float64) * 80 + 6) \
            .repeat(n_views)

        def step():
            loss = batch_loss(model, loss_fn, x, y, n_views=n_views, amp=tuned and cuda)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for _ in range(warmup):
            step()
        _sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        seconds = time.perf_counter() - start
    finally:
        torch.backends.cudnn.benchmark = previous
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else float("nan")
    return {"setting": setting, "volumes_per_s": n_views * batch_size * steps / seconds,
            "ms_per_step": 1000 * seconds / steps, "peak_gib": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--grid-mm", type=float, default=1.5, help="1.5 = 121x145x121")
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--widths", type=_ints, default=(64, 128, 256, 512))
    parser.add_argument("--head-dims", type=_ints, default=(512, 128))
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated subset of {SETTINGS}")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--json", default=None, help="write a benchmark report here")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    settings = args.settings.split(",")
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; choose from {SETTINGS}")
    grid, _ = mni_grid(args.grid_mm)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} thread(s)"
    params = sum(p.numel() for p in build_model("contrastive", depth=args.depth,
                                                widths=args.widths,
                                                head_dims=args.head_dims).encoder.parameters())
    print(f"device: {name}; torch {torch.__version__}")
    print(f"ResNet-{args.depth} widths {args.widths} ({params / 1e6:.2f}M encoder parameters), "
          f"head {args.head_dims}; grid {args.grid_mm} mm {grid}; batch {args.batch_size} x "
          f"{args.views} views; {args.warmup} warm-up + {args.steps} timed steps")
    rows = [measure(s, device=device, grid=grid, depth=args.depth, widths=args.widths,
                    head_dims=args.head_dims, batch_size=args.batch_size, n_views=args.views,
                    warmup=args.warmup, steps=args.steps) for s in settings]
    print(f"{'setting':<10} {'volumes/s':>10} {'ms/step':>10} {'peak GiB':>9}")
    for r in rows:
        print(f"{r['setting']:<10} {r['volumes_per_s']:>10.1f} {r['ms_per_step']:>10.1f} "
              f"{r['peak_gib']:>9.2f}")
    setting = (f"{args.grid_mm:g} mm {'x'.join(map(str, grid))}, ResNet-{args.depth} widths "
               f"{','.join(map(str, args.widths))}, batch {args.batch_size} x {args.views} "
               "views, data on the device")
    figures = [{"figure": f"step only, {r['setting']}", "value": r["volumes_per_s"],
                "unit": "volumes/s", "setting": setting} for r in rows]
    if len(rows) == 2:
        ratio = rows[1]["volumes_per_s"] / rows[0]["volumes_per_s"]
        print(f"speed-up {rows[1]['setting']} / {rows[0]['setting']}: {ratio:.2f}x")
        figures.append({"figure": f"step only, {rows[1]['setting']} / {rows[0]['setting']}",
                        "value": ratio, "unit": "ratio", "setting": setting})
    if args.json:
        report = {"benchmark": "bench_train",
                  **report_header(None if argv is None else [__file__, *argv]),
                  "device_type": device.type, "rows": rows, "figures": figures}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
