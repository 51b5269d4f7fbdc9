"""``brainkit data ...`` and ``brainkit cohort ...`` subcommands.

- ``brainkit data synth``: generate a synthetic cohort; ``brainkit data info``: describe one;
- ``brainkit data manifests``: list the dataset manifests;
- ``brainkit data pack COHORT --out DIR [--dtype uint8|float16]``: a compact copy for training
  (cropped to the brain box, quantised, memory-mapped; :mod:`brainkit.data.packed`);
- ``brainkit data check MANIFEST --root DIR``: validate a local copy (exit 1 when unusable);
- ``brainkit cohort import TABLE --images DIR --out COHORT [--grid-mm MM]``: bring your own
  NIfTI images;
- ``brainkit cohort openbhb ROOT --out COHORT [--grid-mm MM]``: an OpenBHB download (or a
  challenge-kit file with ``--kit-npy NPY --mask TPM``, ROOT being the kit's TSV).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cohort import SUBJECT_CHECKS
from .nifti import IMAGE_CHECKS

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


def _refuse_existing_out(out: Path, overwrite: bool) -> None:
    """``--out`` must be absent or empty, or hold a cohort and ``--overwrite`` be given."""
    from brainkit._util import LOCK_NAME
    from brainkit.errors import ExistingOutputError

    if not out.exists():
        return
    if not out.is_dir():
        raise ExistingOutputError(f"--out {out}: a file of that name exists; choose a folder")
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if not entries:
        return
    if (out / "cohort.json").is_file():
        if overwrite:
            return
        raise ExistingOutputError(f"--out {out} already holds a cohort; choose another --out or "
                                  "pass --overwrite to replace it")
    raise ExistingOutputError(f"--out {out} is not empty (it holds {entries[:3]}"
                              f"{' ...' if len(entries) > 3 else ''}); choose a new or empty "
                              "folder")


def _synth(args) -> int:
    from .synthetic import make_merged

    from brainkit._util import FolderLock

    out = Path(args.out)
    _refuse_existing_out(out, args.overwrite)  # before the (minutes-long) generation
    created = not out.exists()
    try:
        with FolderLock(out, what="data synth", remove=True):  # a second synth refuses
            cohort = make_merged(args.presets, grid_mm=args.grid_mm, seed=args.seed)
            _refuse_existing_out(out, args.overwrite)  # written there meanwhile?
            if (out / "packed.npy").exists():  # a replaced packed cohort's image store
                (out / "packed.npy").unlink()
            cohort.save(out)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    print(f"{cohort} -> {args.out}")
    return 0


def _info(args) -> int:
    from .cohort import Cohort

    cohort = Cohort.load(args.cohort, verify="none" if args.quick else "full")
    t = cohort.table
    print(cohort)
    print(f"content hash: {cohort.content_hash}"
          + (" (not re-read: --quick)" if args.quick else " (verified: every image re-read, "
                                                          "finite, unchanged since saved)"))
    print(t.groupby(["dataset", "diagnosis"]).agg(images=("image_id", "size"),
                                                 subjects=("subject_id", "nunique"),
                                                 age_mean=("age", "mean"),
                                                 age_min=("age", "min"),
                                                 age_max=("age", "max")).round(1).to_string())
    return 0


def _manifests(args) -> int:
    from .manifests import list_manifests, load_manifest

    for name in list_manifests():
        m = load_manifest(name)
        layouts = ", ".join(m.layouts) if m.layouts else "saved cohort"
        print(f"{name:<10} {m.kind:<9} {m.title} [layouts: {layouts}]")
    return 0


def _check(args) -> int:
    from .check import check_dataset

    # A missing manifest or root is a user mistake: one line and exit 2 (brainkit.cli.main).
    report = check_dataset(args.manifest, args.root, layout=args.layout,
                           full=not args.quick, progress=not args.no_progress)
    print(report.summary(max_problems=args.max_problems))
    return 0 if report.ok else 1


def pairs(values, option: str) -> dict[str, str]:
    """``["a=1", "b=2"]`` -> ``{"a": "1", "b": "2"}`` (an --option given as KEY=VALUE)."""
    from brainkit.errors import InputError

    out = {}
    for value in values or ():
        key, sep, text = value.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise InputError(f"{option} {value!r}: expected KEY=VALUE")
        out[key.strip()] = text.strip()
    return out


def bids_options(args) -> dict:
    """The BIDS-reading options shared by ``cohort import --bids`` and ``predict --bids``."""
    return {"derivatives": args.derivatives, "suffix": args.suffix,
            "filters": pairs(args.filter, "--filter"), "match": args.match,
            "columns": pairs(args.column, "--column"), "defaults": pairs(args.set, "--set")}


def add_bids_arguments(parser) -> None:
    """``--derivatives --suffix --filter --match --column --set`` on ``parser``."""
    parser.add_argument("--derivatives", default=None, metavar="NAME",
                        help="read the images of derivatives/NAME (e.g. cat12, fmriprep) "
                             "instead of the raw anat/ images")
    parser.add_argument("--suffix", default="T1w",
                        help="BIDS suffix of the images (default T1w; e.g. probseg)")
    parser.add_argument("--filter", action="append", metavar="ENTITY=VALUE",
                        help="keep images with this BIDS entity, e.g. run=1, label=GM, "
                             "space=MNI152NLin2009cAsym (repeatable)")
    parser.add_argument("--match", default=None, metavar="PATTERN",
                        help="keep files whose name matches this pattern (e.g. 'mwp1*')")
    parser.add_argument("--column", action="append", metavar="NAME=COLUMN",
                        help="read brainkit's NAME (age, sex, diagnosis, site, tiv) from this "
                             "column of participants.tsv / sessions.tsv (repeatable)")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE",
                        help="value of a column the tables lack, e.g. diagnosis=HC "
                             "(repeatable)")


def _import(args) -> int:
    from brainkit.errors import InputError

    from .nifti import import_nifti

    # Table / image problems, a non-empty --out or a folder in use: one line and exit 2
    # (brainkit.cli.main); SIGTERM / Ctrl-C: what was written is removed, exit 128 + N.
    if args.bids is not None:
        if args.table is not None or args.images is not None:
            raise InputError("give either --bids DIR or a TABLE with --images, not both")
        from .bids import import_bids

        cohort = import_bids(args.bids, args.out, grid_mm=args.grid_mm, allow=args.allow,
                             progress=not args.no_progress, **bids_options(args))
    else:
        if args.table is None or args.images is None:
            raise InputError("give a TABLE and --images FOLDER, or --bids DIR")
        cohort = import_nifti(args.table, args.images, args.out, grid_mm=args.grid_mm,
                              allow=args.allow, progress=not args.no_progress)
    print(f"{cohort} -> {args.out}")
    return 0


def _openbhb(args) -> int:
    from brainkit.errors import InputError

    from .openbhb import load_openbhb, load_openbhb_flat

    if args.kit_npy is None:
        cohort = load_openbhb(args.root, splits=args.splits, grid_mm=args.grid_mm,
                              out=args.out, progress=not args.no_progress)
    else:
        if args.mask is None:
            raise InputError("--kit-npy needs --mask (the kit's "
                             "cat12vbm_space-MNI152_desc-gm_TPM.nii.gz)")
        cohort = load_openbhb_flat(args.kit_npy, args.root, args.mask, grid_mm=args.grid_mm,
                                   out=args.out, progress=not args.no_progress)
    print(f"{cohort} -> {args.out}")
    return 0


def _value_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers, LO <= 0 <= HI), got "
                                         f"{text!r}") from None
    return lo, hi


def _pack(args) -> int:
    import numpy as np

    from .cohort import Cohort
    from .packed import pack_cohort

    source = Cohort.load(args.cohort)
    packed = pack_cohort(source, args.out, args.dtype, margin=args.margin,
                         value_range=args.range, overwrite=args.overwrite,
                         progress=not args.no_progress)
    store = packed.packed_store
    full = 4 * len(packed) * int(np.prod(packed.grid_shape))
    box = " x ".join(f"{a}:{b}" for a, b in store.box)
    print(f"{packed} -> {args.out}")
    print(f"box {box} of grid {'x'.join(map(str, packed.grid_shape))}; {store.dtype.name}, "
          f"{store.nbytes / 2**20:.1f} MiB (float32 full grid: {full / 2**20:.1f} MiB, "
          f"{full / max(store.nbytes, 1):.1f}x smaller)")
    if store.dtype.name == "uint8":
        print(f"quantisation: x = code * {store.scale:.6g} + {store.offset:.6g}; "
              f"error <= {store.max_error:.3g}")
    return 0


def _split_names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


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
    synth.add_argument("--out", required=True,
                       help="output cohort directory (new or empty; see --overwrite)")
    synth.add_argument("--overwrite", action="store_true",
                       help="replace a cohort already in --out (any other content is never "
                            "replaced)")
    synth.set_defaults(func=_synth)

    info = sub.add_parser("info", help="describe a saved cohort (re-reads and checks every "
                                       "image)")
    info.add_argument("cohort", help="cohort directory (written by Cohort.save)")
    info.add_argument("--quick", action="store_true",
                      help="do not re-read the images (no NaN / inf or content check)")
    info.set_defaults(func=_info)

    pack = sub.add_parser("pack", help="write a compact copy of a cohort for fast training "
                                       "(cropped, uint8 or float16, memory-mapped)")
    pack.add_argument("cohort", help="cohort directory (written by Cohort.save)")
    pack.add_argument("--out", required=True, help="new cohort directory")
    pack.add_argument("--dtype", default="uint8", choices=("uint8", "float16"),
                      help="storage type (default uint8: 256 levels over the value range, "
                           "error <= half a step)")
    pack.add_argument("--margin", type=int, default=2,
                      help="voxels kept around the union brain bounding box (default 2)")
    pack.add_argument("--range", type=_value_range, default=None, metavar="LO,HI",
                      help="uint8 value range (LO <= 0 <= HI; values outside are clipped); "
                           "default: the cohort's own [min(0, min), max]")
    pack.add_argument("--overwrite", action="store_true",
                      help="replace a cohort already in --out")
    pack.add_argument("--no-progress", action="store_true", help="no progress bars")
    pack.set_defaults(func=_pack)

    manifests = sub.add_parser("manifests", help="list the dataset manifests")
    manifests.set_defaults(func=_manifests)

    check = sub.add_parser("check", help="validate a local copy of a dataset against its "
                                         "manifest (exit 1 when unusable)")
    check.add_argument("manifest", help="manifest name (see `brainkit data manifests`) or a "
                                        "YAML file")
    check.add_argument("--root", required=True, help="the local copy's root folder")
    check.add_argument("--layout", default=None, help="layout to check (default: the first "
                                                      "whose tables exist)")
    check.add_argument("--quick", action="store_true",
                       help="read image headers only (skips the NaN / truncation checks)")
    check.add_argument("--max-problems", type=int, default=30,
                       help="problems listed per severity (default 30)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(func=_check)

    cohort = subparsers.add_parser("cohort", help="make a cohort from your own NIfTI images or "
                                                  "an OpenBHB download")
    csub = cohort.add_subparsers(dest="cohort_command", metavar="SUBCOMMAND")
    cohort.set_defaults(func=lambda args: (cohort.print_help(file=sys.stderr), 2)[1])
    imp = csub.add_parser("import", help="import a table and a folder of NIfTI images, or a "
                                         "BIDS dataset, as a cohort")
    imp.add_argument("table", nargs="?", default=None,
                     help="TSV / CSV in the brainkit vocabulary (one row per image)")
    imp.add_argument("--images", default=None,
                     help="folder holding {image_id}.nii or {image_id}.nii.gz for every row")
    imp.add_argument("--bids", default=None, metavar="DIR",
                     help="a BIDS dataset instead: participants.tsv, sub-*/[ses-*/]anat/"
                          "*_T1w.nii[.gz], sub-*/sub-*_sessions.tsv (age per session)")
    add_bids_arguments(imp)
    imp.add_argument("--out", required=True, help="new cohort folder")
    imp.add_argument("--grid-mm", type=float, default=None,
                     help="resample to the MNI grid with this voxel size (e.g. 1.5, 3, 6); "
                          "default: keep the images' own (shared) grid")
    imp.add_argument("--allow", nargs="+", default=None, metavar="CHECK",
                     choices=SUBJECT_CHECKS + IMAGE_CHECKS,
                     help="accept what is refused by default because it is usually a mistake: "
                          "sex-change (a subject's sex differs between rows), age-order (age "
                          "or years_from_baseline decreases with session), repeat-session (two "
                          "rows share subject_id and session), constant-image (a blank image), "
                          "intensity-range (largest voxel magnitude outside 1e-6..1e6)")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    imp.set_defaults(func=_import)

    obhb = csub.add_parser("openbhb", help="make a cohort from an OpenBHB download (or a "
                                           "challenge-kit file)")
    obhb.add_argument("root", help="the download root (participants.tsv, train/, val/); with "
                                   "--kit-npy: the kit's .tsv matching the .npy rows")
    obhb.add_argument("--out", required=True, help="new cohort folder")
    obhb.add_argument("--grid-mm", type=float, default=None,
                      help="resample to the MNI grid with this voxel size (default: keep 1.5)")
    obhb.add_argument("--splits", type=_split_names, default=None,
                      help="official splits to load, e.g. train,internal_test (default all)")
    obhb.add_argument("--kit-npy", default=None,
                      help="a challenge-kit file of flat rows (data/train.npy or test.npy)")
    obhb.add_argument("--mask", default=None, help="with --kit-npy: the grey-matter TPM mask")
    obhb.add_argument("--no-progress", action="store_true", help="no progress bar")
    obhb.set_defaults(func=_openbhb)
