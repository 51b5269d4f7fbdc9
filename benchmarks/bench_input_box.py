"""The brain-box crop of the model input (``Profile.input_box``), timed.

One contrastive training step of the ``ci`` model (batch 16 x 2 views, exp loss, Adam; data
already in memory, :func:`brainkit.experiments.speed.step_throughput`) on the whole image and
on the MNI152 brain mask's box (:func:`brainkit.data.grid.brain_box`, widened to keep the
whole image's last feature map, as ``Profile.input_box="brain"`` resolves it), on the 6 mm
grid of the synthetic default and the 4 mm grid of the real OASIS-1 chapter. Prints one line
per grid.

Example (about a minute on 2 cores; run it alone, torch uses every core)::

    python benchmarks/bench_input_box.py
"""

from __future__ import annotations

import argparse

import numpy as np

from brainkit.data.grid import brain_box, mni_grid
from brainkit.experiments import get_profile
from brainkit.experiments.speed import step_throughput
from brainkit.models import OUTPUT_STRIDE


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", default="6,4", help="voxel sizes in mm (default 6,4)")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    ci = get_profile("ci")
    for mm in (float(v) for v in args.grids.split(",")):
        shape, affine = mni_grid(mm)
        box = brain_box(shape, affine, stride=OUTPUT_STRIDE)
        kept = np.prod([b - a for a, b in box]) / np.prod(shape)
        ms = {}
        for name, crop in (("whole", None), ("brain box", "brain")):
            profile = ci.replace(grid_mm=mm, input_box=crop)
            ms[name] = 1e3 * step_throughput(profile, steps=args.steps, warmup=3,
                                             device="cpu")["seconds_per_step"]
        print(f"{mm:g} mm grid {'x'.join(map(str, shape))}: box {box} keeps {kept:.0%} of the "
              f"voxels; step {ms['whole']:.1f} ms whole, {ms['brain box']:.1f} ms cropped "
              f"({1 - ms['brain box'] / ms['whole']:.0%} less)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
