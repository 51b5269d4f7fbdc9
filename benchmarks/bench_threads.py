"""How a training run behaves beside another CPU-bound process (torch threads on a small box).

Times one short ci-profile training run (exp loss, 6 mm, the ci model) in a fresh process:
alone, and beside a busy process (a pure-Python loop pinned to no core), with OpenMP's
default waiting (what brainkit runs with: it sets no policy), with active spin-waiting
(``OMP_WAIT_POLICY=ACTIVE``), with passive waiting (``PASSIVE``), and with one torch thread.
Prints the seconds and the slowdown against running alone, and writes a JSON report.

    python benchmarks/bench_threads.py --json benchmarks/results/threads-cpu.json

Run it on a quiet machine: it measures contention, so anything else running spoils it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_RUN = r"""
import sys, time, tempfile
t0 = time.perf_counter()
import numpy as np, torch
from brainkit.data import make_merged
from brainkit.experiments import get_profile
from brainkit.train import fit, TrainConfig
threads = int(sys.argv[1])
if threads > 0:
    torch.set_num_threads(threads)
cohort = make_merged({"openbhb": 200}, grid_mm=6, seed=0)
profile = get_profile("ci")
config = profile.train_config("exp", ages=cohort.table["age"]).replace(
    epochs=int(sys.argv[2]), warmup_epochs=0).for_grid(cohort.grid_shape, cohort.affine)
model = config.build_model()
start = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    fit(model, cohort, config, out_dir=tmp, progress=False)
print(time.perf_counter() - start, torch.get_num_threads())
"""

_BUSY = "while True:\n    pass\n"


def _time(env: dict, threads: int, epochs: int) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", _RUN, str(threads), str(epochs)],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    seconds, used = out.stdout.split()[-2:]
    return float(seconds), int(used)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from brainkit.experiments.speed import report_header

    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY",
                                                              "OMP_NUM_THREADS")}
    spin = {**base, "OMP_WAIT_POLICY": "ACTIVE"}
    passive = {**base, "OMP_WAIT_POLICY": "PASSIVE"}
    cases = [("alone, default waiting", base, 0, False),
             ("beside a busy process, default waiting", base, 0, True),
             ("alone, spin-waiting", spin, 0, False),
             ("alone, passive waiting", passive, 0, False),
             ("beside a busy process, spin-waiting", spin, 0, True),
             ("beside a busy process, passive waiting", passive, 0, True),
             ("beside a busy process, one thread", passive, 1, True)]
    rows = []
    for name, env, threads, busy in cases:
        other = subprocess.Popen([sys.executable, "-c", _BUSY]) if busy else None
        try:
            time.sleep(1.0 if busy else 0.0)
            seconds, used = _time(env, threads, args.epochs)
        finally:
            if other is not None:
                other.kill()
                other.wait()
        rows.append({"case": name, "seconds": seconds, "torch_threads": used})
        print(f"{name:45s} {seconds:7.1f} s  ({used} thread(s))", flush=True)
    alone = {r["case"].split(", ")[1]: r["seconds"] for r in rows if r["case"].startswith("alone")}
    figures = []
    for r in rows:
        policy = r["case"].split(", ")[1]
        ref = alone.get(policy, alone["passive waiting"])
        r["slowdown_vs_alone"] = r["seconds"] / ref
        figures.append({"figure": r["case"], "value": round(r["seconds"], 2), "unit": "s",
                        "setting": f"ci exp, 200 images, {args.epochs} epochs"})
        figures.append({"figure": f"{r['case']}: slowdown", "value": round(r["slowdown_vs_alone"],
                                                                           2),
                        "unit": "ratio", "setting": "vs alone, same waiting policy"})
    for r in rows:
        print(f"{r['case']:45s} x{r['slowdown_vs_alone']:.2f}")
    if args.json:
        report = {**report_header(), "benchmark": "threads", "figures": figures, "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
