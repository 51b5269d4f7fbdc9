"""``brainkit embed``.

``brainkit embed --run RUN --cohort DIR --out FILE`` writes embeddings (``.parquet``:
``image_id`` and ``z0``, ``z1``, ... ; ``.npy``: the bare (n, D) array). ``brainkit train``
lives in :mod:`brainkit.experiments.cli` (it builds its run from a profile).
"""

from __future__ import annotations

import sys
from io import BytesIO
from pathlib import Path

from brainkit.errors import InputError

__all__ = ["register"]

# files of a cohort or run folder that ``--out`` must not replace
_RESERVED = ("images.npy", "packed.npy", "table.parquet", "metrics.parquet", "checkpoint.pt",
             "config.json", "cohort.json")


def _embed(args) -> int:
    import pandas as pd

    from brainkit.data import Cohort

    from .checkpoint import atomic_write
    from .inference import embed
    from .runs import load_model

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".npy"):
        raise InputError(f"--out {out}: the extension must be .parquet or .npy, got "
                         f"{suffix or 'none'}")
    if out.name in _RESERVED and any((out.parent / marker).exists()
                                     for marker in ("cohort.json", "config.json")):
        raise InputError(f"--out {out} would replace a file of the cohort or run in "
                         f"{out.parent}; write the embeddings elsewhere")
    device = args.device or ("cuda" if _cuda() else "cpu")
    # NaN / inf weights, or a cohort on another grid than the run's: refused (one line)
    model = load_model(args.run, device=device)
    cohort = Cohort.load(args.cohort)
    z = embed(model, cohort, batch_size=args.batch_size, device=device, layer=args.layer)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = BytesIO()
    if suffix == ".parquet":
        table = pd.DataFrame(z, columns=[f"z{i}" for i in range(z.shape[1])])
        table.insert(0, "image_id", cohort.table["image_id"].to_numpy())
        table.to_parquet(buffer, index=False)
    else:
        import numpy as np

        np.save(buffer, z)
    atomic_write(out, lambda fh: fh.write(buffer.getvalue()))
    print(f"embedded {z.shape[0]} images into {z.shape[1]} dimensions -> {out}")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def register(subparsers) -> None:
    """Add the ``embed`` subcommand to an argparse ``subparsers`` object (``brainkit train``,
    which needs a profile, is registered by :mod:`brainkit.experiments.cli`)."""
    emb = subparsers.add_parser(
        "embed", help="write embeddings of a cohort from a trained run",
        description="Embed every image of a saved cohort with the model of a run directory.")
    emb.add_argument("--run", required=True, type=Path, help="run directory (config.json + "
                                                             "checkpoint.pt)")
    emb.add_argument("--cohort", required=True, type=Path, help="saved cohort directory")
    emb.add_argument("--out", required=True, type=Path,
                     help="output file: .parquet (image_id, z0, z1, ...) or .npy (n, D)")
    emb.add_argument("--layer", choices=("encoder", "projection"), default="encoder",
                     help="representation: pooled encoder features (default; what the "
                          "probes read) or the contrastive projection head's output")
    emb.add_argument("--batch-size", type=int, default=32)
    emb.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    emb.set_defaults(func=_embed)

