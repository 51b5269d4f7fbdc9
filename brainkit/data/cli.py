"""``brainkit data ...`` subcommands: make a synthetic cohort, describe a saved one."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def _parse_sizes(text: str) -> dict[str, int]:
    sizes = {}
    for part in text.split(","):
        name, sep, n = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(
                f"expected PRESET=N[,PRESET=N...], e.g. openbhb=300,adni=80; got {part!r}")
        try:
            sizes[name.strip()] = int(n)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: number of subjects must be an integer, "
                                             f"got {n!r}") from None
    return sizes


def _synth(args) -> int:
    from .synthetic import make_merged

    cohort = make_merged(args.presets, grid_mm=args.grid_mm, seed=args.seed)
    cohort.save(args.out)
    print(f"{cohort} -> {args.out}")
    return 0


def _info(args) -> int:
    from .cohort import Cohort

    cohort = Cohort.load(args.cohort)
    t = cohort.table
    print(cohort)
    print(f"content hash: {cohort.content_hash}")
    print(t.groupby(["dataset", "diagnosis"]).agg(images=("image_id", "size"),
                                                 subjects=("subject_id", "nunique"),
                                                 age_mean=("age", "mean"),
                                                 age_min=("age", "min"),
                                                 age_max=("age", "max")).round(1).to_string())
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="make, inspect and check cohorts")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(file=sys.stderr), 2)[1])

    synth = sub.add_parser("synth", help="generate a synthetic cohort and save it")
    synth.add_argument("--presets", type=_parse_sizes, default={"openbhb": 300},
                       help="subjects per preset, e.g. openbhb=300,adni=80 (default openbhb=300)")
    synth.add_argument("--grid-mm", type=float, default=6, choices=(1.5, 3, 6),
                       help="voxel size in mm (default 6)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", required=True, help="output cohort directory")
    synth.set_defaults(func=_synth)

    info = sub.add_parser("info", help="describe a saved cohort")
    info.add_argument("cohort", help="cohort directory (written by Cohort.save)")
    info.set_defaults(func=_info)
