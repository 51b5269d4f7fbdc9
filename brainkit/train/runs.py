"""Run directories: ``config.json`` + ``checkpoint.pt``, enough to rebuild a trained model.

``config.json`` holds at least ``{"format": "brainkit-run", "model": {...}}`` where ``model``
are the keyword arguments of :func:`brainkit.models.build_model` (``kind``, ``depth``,
``widths``, ``in_channels``, ``norm``, and ``head_dims`` or ``target_mean`` /
``target_scale``); :func:`brainkit.train.fit` adds the loss, the training settings and the
data identity. ``checkpoint.pt`` holds the state dict under ``"model"`` (and, for a training
run, the optimiser, scheduler and random states; see :mod:`brainkit.train.loop`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError, NonFiniteError
from .checkpoint import CHECKPOINT_NAME, atomic_save, atomic_write, load_checkpoint, \
    nonfinite_tensors
from .inference import resolve_device, unwrap_model

__all__ = [
    "CONFIG_NAME",
    "load_model",
    "model_config",
    "read_run_config",
    "save_model",
    "write_run_config",
]

#: File name of a run's configuration.
CONFIG_NAME = "config.json"
_FORMAT = "brainkit-run"
_FORMAT_VERSION = 1


def model_config(model: nn.Module) -> dict:
    """The :func:`brainkit.models.build_model` arguments that rebuild ``model``.

    Parameters
    ----------
    model : ContrastiveModel or RegressionModel
        With a :class:`brainkit.models.ResNet3d` encoder (wrappers such as
        DistributedDataParallel or ``torch.compile`` are looked through).

    Returns
    -------
    dict
        JSON-ready: ``kind``, ``depth``, ``widths``, ``in_channels``, ``norm``,
        ``input_box`` (when the encoder crops its input), and ``head_dims`` (contrastive) or
        ``target_mean`` / ``target_scale`` (regression).

    Raises
    ------
    TypeError
        For a model this function cannot describe (another class or encoder).
    """
    from brainkit.models import RESNET_LAYERS, ContrastiveModel, RegressionModel, ResNet3d

    base = unwrap_model(model)
    if not isinstance(base, (ContrastiveModel, RegressionModel)):
        raise TypeError("model_config describes brainkit ContrastiveModel / RegressionModel, got "
                        f"{type(base).__name__}; pass model_config=... explicitly")
    enc = base.encoder
    if not isinstance(enc, ResNet3d):
        raise TypeError(f"model_config needs a brainkit ResNet3d encoder, got "
                        f"{type(enc).__name__}; pass model_config=... explicitly")
    depths = {tuple(v): k for k, v in RESNET_LAYERS.items()}
    if tuple(enc.layers) not in depths:
        raise TypeError(f"encoder stages {enc.layers} match no depth in RESNET_LAYERS "
                        f"{RESNET_LAYERS}; pass model_config=... explicitly")
    cfg = {"depth": depths[tuple(enc.layers)], "widths": [int(w) for w in enc.widths],
           "in_channels": int(enc.in_channels), "norm": str(enc.norm)}
    if getattr(enc, "input_box", None) is not None:
        cfg["input_box"] = [list(pair) for pair in enc.input_box]
    if isinstance(base, ContrastiveModel):
        return {"kind": "contrastive", **cfg, "head_dims": [int(d) for d in base.head_dims]}
    return {"kind": "regression", **cfg, "target_mean": float(base.target_mean),
            "target_scale": float(base.target_scale)}


def write_run_config(run_dir: str | os.PathLike, config: dict) -> Path:
    """Write ``config.json`` atomically (adds ``format`` / ``format_version``).

    Values that JSON cannot hold (e.g. a kernel given as a function) are written as their
    ``repr``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    full = {"format": _FORMAT, "format_version": _FORMAT_VERSION, **config}
    text = json.dumps(full, indent=2, sort_keys=False, default=repr) + "\n"
    return atomic_write(run_dir / CONFIG_NAME, lambda fh: fh.write(text.encode()))


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """Read and check a run's ``config.json``.

    Raises
    ------
    FileNotFoundError
        If ``run_dir/config.json`` is missing.
    ValueError
        If it is not JSON or not a brainkit run configuration.
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a brainkit run directory")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a brainkit run configuration (no format={_FORMAT!r})")
    if config.get("format_version", 0) > _FORMAT_VERSION:
        raise ValueError(f"{path}: format version {config['format_version']} is newer than this "
                         "brainkit understands; upgrade brainkit")
    return config


def save_model(model: nn.Module, run_dir: str | os.PathLike, *, extra: dict | None = None,
               overwrite: bool = False) -> Path:
    """Save a model so that :func:`load_model` can rebuild it.

    Parameters
    ----------
    model : ContrastiveModel or RegressionModel
        Described by :func:`model_config`.
    run_dir : path-like
        Created if needed; receives ``config.json`` and ``checkpoint.pt``.
    extra : dict, optional
        More JSON-ready entries for ``config.json`` (e.g. how the model was trained); the
        key ``model`` is reserved.
    overwrite : bool, default False
        Replace an existing ``checkpoint.pt`` (a training run's checkpoint included).

    Returns
    -------
    pathlib.Path
        ``run_dir``.
    """
    extra = dict(extra or {})
    if "model" in extra:
        raise ValueError("extra must not contain the key 'model' (it is written from the model)")
    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT_NAME).exists() and not overwrite:
        raise FileExistsError(f"{run_dir / CHECKPOINT_NAME} exists; pass overwrite=True to "
                              "replace it")
    cfg = model_config(model)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    atomic_save({"model": state}, run_dir / CHECKPOINT_NAME)
    write_run_config(run_dir, {"model": cfg, **extra})
    return run_dir


def load_model(run_dir: str | os.PathLike, *,
               device: str | torch.device | None = None) -> nn.Module:
    """Rebuild a model from a run directory (``build_model(**config["model"])`` + weights).

    Parameters
    ----------
    run_dir : path-like
        Written by :func:`save_model` or :func:`brainkit.train.fit`.
    device : str or torch.device, optional
        Default: CUDA when available, else the CPU.

    Returns
    -------
    ContrastiveModel or RegressionModel
        On ``device``, in eval mode. When the run recorded the grid it was trained on
        (``config.json``'s ``data.grid_shape``, written by :func:`brainkit.train.fit`), the
        model carries it as ``trained_grid_shape`` (and ``trained_grid_affine``, when
        recorded): :func:`brainkit.train.embed` and :func:`brainkit.train.predict_age` then
        refuse a cohort on another grid.

    Raises
    ------
    FileNotFoundError
        No ``config.json`` or ``checkpoint.pt``.
    ValueError
        Unreadable files, a model entry ``build_model`` does not accept, or weights that do
        not fit it.
    brainkit.errors.NonFiniteError
        Weights holding NaN or inf (the tensors are named).
    """
    from brainkit.models import build_model

    config = read_run_config(run_dir)
    spec = config.get("model")
    if not isinstance(spec, dict):
        raise InputError(f"{Path(run_dir) / CONFIG_NAME} has no 'model' entry; the run was "
                         "trained with a model brainkit cannot describe")
    try:
        model = build_model(**spec)
    except TypeError as err:
        raise InputError(f"{Path(run_dir) / CONFIG_NAME}: 'model' entry {spec} does not match "
                         f"build_model ({err})") from err
    path = Path(run_dir) / CHECKPOINT_NAME
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("model"), dict):
        raise InputError(f"{path} holds no 'model' state dict")
    bad = nonfinite_tensors(ckpt["model"])
    if bad:
        raise NonFiniteError(f"{path}: {len(bad)} of {len(ckpt['model'])} weight tensor(s) hold "
                             f"NaN or inf (e.g. {bad[:3]}); the model would output NaN: use an "
                             "earlier checkpoint or train again")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:  # missing / unexpected keys, shape mismatches
        raise InputError(f"{path}: the weights do not fit the model of {CONFIG_NAME} "
                         f"({str(err).splitlines()[0]})") from None
    grid = (config.get("data") or {}).get("grid_shape")
    if isinstance(grid, list) and len(grid) == 3:
        model.trained_grid_shape = tuple(int(g) for g in grid)
    affine = (config.get("data") or {}).get("grid_affine")
    if affine is not None:
        model.trained_grid_affine = np.asarray(affine, dtype=float)
    return model.to(resolve_device(device)).eval()
