"""``brainkit train`` and ``brainkit embed``.

``brainkit train --cohort DIR --loss exp --out RUN [--profile ci] [--epochs N] [--batch-size B]
[--device cpu|cuda] [--resume]`` trains a model on a saved cohort (``Cohort.save``) with the
model and protocol of a profile (:mod:`brainkit.experiments.profiles`); ``brainkit embed --run
RUN --cohort DIR --out FILE`` writes embeddings (``.parquet``: ``image_id`` and ``z0``,
``z1``, ... ; ``.npy``: the bare (n, D) array).
"""

from __future__ import annotations

import sys
from io import BytesIO
from pathlib import Path

from brainkit.errors import InputError

__all__ = ["register", "loss_kwargs_for"]

_LOSS_NAMES = ("l1", "yaware", "threshold", "exp", "rnc", "adapn")
#: Files of a saved cohort or a run directory that ``embed --out`` must never replace.
_RESERVED = ("images.npy", "packed.npy", "table.parquet", "metrics.parquet", "checkpoint.pt",
             "config.json", "cohort.json")
_KERNELISED = ("yaware", "threshold", "exp", "adapn")


def loss_kwargs_for(loss: str, profile) -> dict:
    """``make_loss`` keyword arguments a profile implies for a loss.

    The kernelised losses (y-aware, threshold, exp, AdapN) take the profile's ``sigma`` and
    ``temperature`` (the paper: 0.1); RnC keeps its own default temperature (the paper: 2.0);
    ``"l1"`` takes none.
    """
    if loss in _KERNELISED:
        return {"sigma": profile.sigma, "temperature": profile.temperature}
    return {}


def _train(args) -> int:
    import numpy as np
    import torch

    from brainkit.data import Cohort
    from brainkit.experiments import get_profile
    from brainkit.models import build_model

    from .loop import TrainingInterrupted, fit

    profile = get_profile(args.profile).for_loss(args.loss)
    cohort = Cohort.load(args.cohort)
    indices = None
    if args.split is not None:
        if "split" not in cohort.table:
            raise InputError(f"--split {args.split}: the cohort in {args.cohort} has no "
                             "'split' column")
        indices = np.flatnonzero(cohort.table["split"].to_numpy() == args.split)
        if indices.size == 0:
            raise InputError(f"--split {args.split}: no rows of {args.cohort} have that split "
                             f"(found {sorted(cohort.table['split'].unique())})")
    kind = "regression" if args.loss == "l1" else "contrastive"
    config = profile.model_config(kind)
    if kind == "regression":
        config.pop("head_dims")
        ages = cohort.table["age"].to_numpy()[indices if indices is not None else slice(None)]
        config.update(target_mean=float(ages.mean()), target_scale=float(max(ages.std(), 1.0)))
    torch.manual_seed(args.seed)
    model = build_model(**config)
    try:
        result = fit(
            model, cohort, args.loss, loss_kwargs=loss_kwargs_for(args.loss, profile) or None,
            indices=indices, out_dir=args.out,
            epochs=args.epochs if args.epochs is not None else profile.epochs,
            batch_size=args.batch_size if args.batch_size is not None else profile.batch_size,
            lr=args.lr if args.lr is not None else profile.lr,
            weight_decay=profile.weight_decay, lr_step=profile.lr_step,
            lr_gamma=profile.lr_gamma, lr_schedule=profile.lr_schedule,
            warmup_epochs=min(profile.warmup_epochs,
                              (args.epochs if args.epochs is not None else profile.epochs) - 1),
            n_views=None if kind == "regression" else profile.n_views,
            augmentation=args.augmentation or profile.augmentation,
            device=args.device or profile.resolved_device(), seed=args.seed,
            resume=args.resume, progress=not args.no_progress)
    except TrainingInterrupted as err:
        print(f"brainkit train: {err}", file=sys.stderr)
        return 128 + err.signal_number
    # Other mistakes (a missing cohort, --epochs 0, a resume mismatch, a folder in use, a
    # diverging loss) reach brainkit.cli.main: one line, exit 2.
    n_images = len(cohort) if indices is None else len(indices)
    summary = f"; final loss {result.metrics['loss'].iloc[-1]:.4f}" if len(result.metrics) else ""
    print(f"trained {result.epochs_completed} epoch(s) on {n_images} images ({args.loss}, "
          f"profile {profile.name}){summary} -> {result.out_dir}")
    return 0


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
    """Add the ``train`` and ``embed`` subcommands to an argparse ``subparsers`` object."""
    train = subparsers.add_parser(
        "train", help="train a model on a saved cohort",
        description="Train a contrastive model (or the L1 regression baseline) on a cohort "
                    "saved with Cohort.save, with the model and protocol of a profile. The run "
                    "directory receives config.json, checkpoint.pt and metrics.parquet; "
                    "SIGTERM / Ctrl-C writes a checkpoint and --resume continues it.")
    train.add_argument("--cohort", required=True, type=Path, help="saved cohort directory")
    train.add_argument("--loss", required=True, choices=_LOSS_NAMES, help="loss to train with")
    train.add_argument("--out", required=True, type=Path, help="run directory")
    train.add_argument("--profile", default=None,
                       help="ci, workstation or paper (default: $BRAINKIT_PROFILE or ci)")
    train.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    train.add_argument("--batch-size", type=int, default=None,
                       help="override the profile's batch size (images per step)")
    train.add_argument("--lr", type=float, default=None, help="override the learning rate")
    train.add_argument("--augmentation", choices=("none", "crop", "cutout", "all"),
                       default=None, help="override the profile's augmentation")
    train.add_argument("--split", default=None,
                       help="train only on rows whose 'split' column has this value")
    train.add_argument("--device", default=None,
                       help="cpu, cuda or cuda:N (default: the profile's, CUDA when available)")
    train.add_argument("--seed", type=int, default=0, help="model initialisation, batch order "
                                                           "and augmentation seed (default 0)")
    train.add_argument("--resume", action="store_true",
                       help="continue from RUN/checkpoint.pt if it exists")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    emb = subparsers.add_parser(
        "embed", help="write embeddings of a cohort from a trained run",
        description="Embed every image of a saved cohort with the model of a run directory.")
    emb.add_argument("--run", required=True, type=Path, help="run directory (config.json + "
                                                             "checkpoint.pt)")
    emb.add_argument("--cohort", required=True, type=Path, help="saved cohort directory")
    emb.add_argument("--out", required=True, type=Path,
                     help="output file: .parquet (image_id, z0, z1, ...) or .npy (n, D)")
    emb.add_argument("--layer", choices=("projection", "encoder"), default=None,
                     help="representation (default: projection for contrastive models, "
                          "encoder for the regression baseline)")
    emb.add_argument("--batch-size", type=int, default=32)
    emb.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    emb.set_defaults(func=_embed)

