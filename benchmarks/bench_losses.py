"""Benchmark the brainkit loss family: forward + backward time against batch size.

Times every loss (both formulations of the kernelised ones, RnC, AdapN) on random unit-norm
embeddings of D dimensions, two views per sample, for each batch size N (rows), and the
naive loop implementations of ``tests/losses/naive_losses.py`` at small N. Also reports the
peak memory of the threshold loss at N = 1024 (CUDA: allocator peak; CPU: peak resident
set size of a child process, above its baseline after building the inputs).

Not a test. Example::

    python benchmarks/bench_losses.py                      # CPU, N in 64 256 1024 4096
    python benchmarks/bench_losses.py --sizes 64 256 --naive-max-n 0
    python benchmarks/bench_losses.py --device cuda --dtype bfloat16-autocast

On a shared machine pass ``--threads 1``: with busy cores, multi-threaded kernels wait for
descheduled threads and the timings become noise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from brainkit.losses import AdapNLoss, ExpLoss, RnCLoss, ThresholdLoss, YAwareLoss

REPO = Path(__file__).resolve().parents[1]

LOSSES = {
    "yaware/reference": lambda n: YAwareLoss(sigma=2.0),
    "yaware/paper": lambda n: YAwareLoss(sigma=2.0, formulation="paper"),
    "threshold/reference": lambda n: ThresholdLoss(sigma=2.0),
    "threshold/paper": lambda n: ThresholdLoss(sigma=2.0, formulation="paper"),
    "exp/reference": lambda n: ExpLoss(sigma=2.0),
    "exp/paper": lambda n: ExpLoss(sigma=2.0, formulation="paper"),
    "rnc": lambda n: RnCLoss(),
    "adapn(k=N/4)": lambda n: AdapNLoss(sigma=2.0, neighbourhood_size=max(2, n // 4)),
}


def naive_for(name: str, n: int):
    """The naive loop implementation matching ``LOSSES[name]`` (from the test folder)."""
    sys.path.insert(0, str(REPO / "tests" / "losses"))
    from naive_losses import naive_adapn, naive_kernelised, naive_rnc

    if name == "rnc":
        return lambda z, y: naive_rnc(z, y, tau=2.0)
    if name.startswith("adapn"):
        return lambda z, y: naive_adapn(z, y, sigma=2.0, neighbourhood_size=max(2, n // 4))
    loss, formulation = name.split("/")
    return lambda z, y: naive_kernelised(z, y, loss=loss, sigma=2.0, formulation=formulation)


def make_inputs(n: int, dim: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    samples = max(1, n // 2)
    ages = (6 + 80 * torch.rand(samples, generator=g, dtype=torch.float64)).repeat(2)[:n]
    z = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    return z.to(device), ages.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(fn, z, y, device, mode: str) -> tuple[float, float]:
    """One forward + backward; returns (seconds, loss value)."""
    x = z.detach().clone().requires_grad_(True)
    sync(device)
    start = time.perf_counter()
    if mode == "bfloat16-autocast":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = fn(x.to(torch.bfloat16) * 1.0, y)
    else:
        loss = fn(x, y)
    loss.backward()
    sync(device)
    return time.perf_counter() - start, float(loss.detach())


def measure(fn, z, y, device, mode: str, repeats: int, budget_s: float) -> tuple[float, float]:
    """Best (minimum) seconds of ``repeats`` runs after one warm-up; the minimum is the least
    disturbed by other processes on a shared machine. A warm-up slower than ``budget_s`` is
    itself the measurement."""
    first, value = time_step(fn, z, y, device, mode)
    if first > budget_s:
        return first, value
    runs = [time_step(fn, z, y, device, mode)[0] for _ in range(repeats)]
    return min(runs), value


def peak_memory_threshold(n: int, dim: int, device: torch.device, formulation: str) -> float | None:
    """Peak memory (MiB) of one threshold forward + backward at N = n."""
    if device.type == "cuda":
        z, y = make_inputs(n, dim, device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        time_step(ThresholdLoss(sigma=2.0, formulation=formulation), z, y, device, "float32")
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if device.type == "cpu":
        cmd = [sys.executable, __file__, "--_peak-rss", str(n), str(dim), formulation]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        try:
            return float(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None
    return None


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _child_peak_rss(n: int, dim: int, formulation: str) -> None:
    torch.set_num_threads(1)
    z, y = make_inputs(n, dim, torch.device("cpu"))
    fn = ThresholdLoss(sigma=2.0, formulation=formulation)
    time_step(fn, z[:8], y[:8], torch.device("cpu"), "float32")  # load kernels first
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM), Linux >= 4.0
    base = _vm_kib("VmRSS")
    time_step(fn, z, y, torch.device("cpu"), "float32")
    print((_vm_kib("VmHWM") - base) / 1024)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024, 4096], help="batch sizes N (rows)")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension D (default 128)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after a warm-up (the minimum is shown)")
    parser.add_argument("--budget", type=float, default=2.0, help="skip repeats when one run exceeds this many seconds")
    parser.add_argument("--naive-max-n", type=int, default=64, help="time the naive loops for N <= this (0: never)")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES), help="losses to time")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16-autocast"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--_peak-rss", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._peak_rss:
        n, dim, formulation = args._peak_rss
        _child_peak_rss(int(n), int(dim), formulation)
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"D = {args.dim}, mode {args.dtype}, best of {args.repeats} after a warm-up"
    )
    header = f"{'loss':<22}{'N':>6}{'fwd+bwd ms':>13}{'naive ms':>12}{'speed-up':>10}{'|diff|':>10}"
    print(header)
    print("-" * len(header))
    for name in args.losses:
        for n in args.sizes:
            z, y = make_inputs(n, args.dim, device)
            fn = LOSSES[name](n)
            seconds, value = measure(fn, z, y, device, args.dtype, args.repeats, args.budget)
            naive_ms = speedup = diff = ""
            if n <= args.naive_max_n:
                slow = naive_for(name, n)
                z64, y64 = z.double().cpu(), y.cpu()
                start = time.perf_counter()
                x = z64.clone().requires_grad_(True)
                ref = slow(x, y64)
                ref.backward()
                naive_s = time.perf_counter() - start
                naive_ms = f"{1e3 * naive_s:.1f}"
                speedup = f"{naive_s / seconds:.0f}x"
                diff = f"{abs(float(ref.detach()) - value):.1e}"
            print(f"{name:<22}{n:>6}{1e3 * seconds:>13.2f}{naive_ms:>12}{speedup:>10}{diff:>10}", flush=True)
    where = "allocator peak" if device.type == "cuda" else "peak RSS above baseline, 1 thread"
    for formulation in ("reference", "paper"):
        mib = peak_memory_threshold(1024, args.dim, device, formulation)
        shown = f"{mib:.0f} MiB" if mib is not None else "not measurable"
        print(f"threshold/{formulation} N=1024 peak memory, forward + backward ({where}): {shown}")
    print(f"(an (N, N, N) float32 tensor at N = 1024 would take {1024**3 * 4 / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
