"""Batched, gradient-free inference: embeddings and predicted ages for a cohort."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["embed", "predict_age", "recalibrate_batchnorm", "resolve_device", "resolve_indices",
           "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def resolve_indices(indices, n: int, name: str = "indices") -> np.ndarray:
    """Validate positions into a cohort of ``n`` images.

    Parameters
    ----------
    indices : array-like of int, or None
        Positions (``None`` = all, in order). Negative positions and repeats are refused.
    n : int
        Cohort size.
    name : str
        Argument name used in error messages.

    Returns
    -------
    numpy.ndarray of shape (m,), dtype int64
    """
    if indices is None:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of positions, got shape {idx.shape}")
    if idx.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"{name} must hold integer positions, got dtype {idx.dtype}")
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise ValueError(f"{name} holds positions outside 0..{n - 1}: {idx[bad][:5].tolist()}")
    values, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{name} repeats positions {values[counts > 1][:5].tolist()}")
    return idx.astype(np.int64)


def _check_cohort(cohort, model: nn.Module | None = None) -> None:
    if not (hasattr(cohort, "images") and hasattr(cohort, "table")):
        raise TypeError(f"cohort must be a brainkit.data.Cohort, got {type(cohort).__name__}")
    if getattr(cohort, "grid_shape", None) is None:
        raise ValueError("cohort has no images (table-only); training and inference need images")
    trained = getattr(unwrap_model(model), "trained_grid_shape", None) if model is not None \
        else None
    if trained is not None and tuple(trained) != tuple(cohort.grid_shape):
        from brainkit.errors import InputError

        raise InputError(
            f"the model was trained on images of grid {'x'.join(map(str, trained))} but the "
            f"cohort's grid is {'x'.join(map(str, cohort.grid_shape))} (another voxel size?); "
            "embed a cohort on the run's grid (e.g. brainkit cohort import --grid-mm with the "
            "run's voxel size)")
    affine = getattr(unwrap_model(model), "trained_grid_affine", None) if model is not None \
        else None
    if affine is not None and getattr(cohort, "affine", None) is not None \
            and not np.allclose(np.asarray(cohort.affine, dtype=float), affine, atol=1e-3):
        from brainkit.errors import InputError

        raise InputError(
            "the cohort's grid has the model's shape but another affine (voxel size "
            f"{np.sqrt((np.asarray(cohort.affine)[:3, :3] ** 2).sum(0)).round(3).tolist()} mm, "
            f"origin {np.asarray(cohort.affine)[:3, 3].round(2).tolist()}; trained on "
            f"{np.sqrt((affine[:3, :3] ** 2).sum(0)).round(3).tolist()} mm, origin "
            f"{affine[:3, 3].round(2).tolist()}); import the scans onto the run's grid")


def _ids(cohort, positions) -> list[str]:
    return cohort.table["image_id"].iloc[list(positions)].astype(str).tolist()


def _host_batches(cohort, device):
    """Batches read on the host (as stored: a packed cohort's uint8 / float16 boxes) and
    decoded to float32 full-grid volumes (B, 1, X, Y, Z) on ``device``."""
    from brainkit.data.loaders import HostBatches

    return HostBatches(cohort, device, pin_memory=False)


def resolve_device(device=None, model: nn.Module | None = None) -> torch.device:
    """The device a brainkit function runs on: ``device`` when given; otherwise (``None`` or
    ``"auto"``) the device of ``model``'s parameters when there is a model to follow, else
    CUDA when available, else the CPU. The one rule of every ``device`` argument."""
    if device is None or device == "auto":
        if model is not None:
            for p in unwrap_model(model).parameters():
                return p.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def _batched(model: nn.Module, cohort, indices, batch_size: int, device, amp, channels_last,
             fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> np.ndarray:
    _check_cohort(cohort, model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    idx = resolve_indices(indices, len(cohort))
    device = resolve_device(device, model)
    amp = (device.type == "cuda") if amp is None else bool(amp)
    channels_last = (device.type == "cuda") if channels_last is None else bool(channels_last)
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    outputs = []
    source = _host_batches(cohort, device)
    try:
        for start in range(0, len(idx), batch_size):
            rows = idx[start:start + batch_size]
            x = source.load(rows)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                out = fn(model, x)
            out = out.float().cpu()  # (the copy waits for the device: checks cost no sync)
            bad = ~torch.isfinite(out.reshape(len(rows), -1)).all(dim=1)
            if bool(bad.any()):
                _refuse_nonfinite(cohort, rows, bad, x)
            outputs.append(out)
    finally:
        model.train(was_training)
    return torch.cat(outputs).numpy()


def _refuse_nonfinite(cohort, rows, bad: torch.Tensor, x: torch.Tensor) -> None:
    """NaN / inf outputs: name the images, and whether their voxels or the model are at
    fault."""
    from brainkit.errors import NonFiniteError

    rows = np.asarray(rows)[bad.numpy()]
    x_bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1).cpu()
    if bool(x_bad.any()):
        ids = _ids(cohort, rows)
        raise NonFiniteError(f"images {ids[:5]}{' ...' if len(ids) > 5 else ''} hold NaN or "
                             "inf voxels (the cohort's files were changed after import?); "
                             "check the cohort with brainkit data info")
    ids = _ids(cohort, rows)
    raise NonFiniteError(f"the model's output is NaN or inf for images {ids[:5]}"
                         f"{' ...' if len(ids) > 5 else ''} although their voxels are finite "
                         "(weights that overflow, or images with extreme values)")


def embed(model: nn.Module, cohort, indices=None, *, batch_size: int = 32,
          device: str | torch.device | None = None, layer: str = "encoder",
          amp: bool | None = None, channels_last: bool | None = None) -> np.ndarray:
    """Embeddings of cohort images, computed in eval mode without gradients.

    Parameters
    ----------
    model : ContrastiveModel or RegressionModel
        Anything with an ``embed(x, layer=...)`` method; it must already be on ``device``.
    cohort : brainkit.data.Cohort
    indices : array-like of int, optional
        Positions to embed (default: all, in order).
    batch_size : int, default 32
    device : str or torch.device, optional
        Default: the model's device (:func:`resolve_device`).
    layer : {"encoder", "projection"}, default "encoder"
        Which representation: ``"encoder"`` (pooled encoder features: what the paper's
        probes and every brainkit design read) or ``"projection"`` (the L2-normalised
        projection-head output the contrastive loss sees; ContrastiveModel only).
    amp, channels_last : bool, optional
        bf16 autocast and ``channels_last_3d`` input; default on for CUDA, off for CPU.

    Returns
    -------
    numpy.ndarray of shape (n, D), float32
        Row ``i`` belongs to ``indices[i]``. The model's train/eval mode is restored.

    Raises
    ------
    brainkit.errors.InputError
        The model records the grid it was trained on (``trained_grid_shape``, set by
        :func:`brainkit.train.load_model`) and the cohort is on another grid.
    brainkit.errors.NonFiniteError
        An output is NaN or inf (the images are named, and whether their voxels hold NaN /
        inf): never written as NaN rows.

    Examples
    --------
    >>> z = embed(model, cohort, batch_size=8)   # doctest: +SKIP
    >>> z.shape
    (len(cohort), 128)
    """
    base = unwrap_model(model)
    if not hasattr(base, "embed"):
        raise TypeError(f"model {type(base).__name__} has no embed(x, layer=...) method")
    return _batched(model, cohort, indices, batch_size, device, amp, channels_last,
                    lambda m, x: m.embed(x, layer=layer))


def embed_and_predict(model: nn.Module, cohort, indices=None, *, batch_size: int = 32,
                      device: str | torch.device | None = None, amp: bool | None = None,
                      channels_last: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encoder features and the model's output from one forward pass per batch.

    What ``embed(..., layer="encoder")`` and either ``embed(..., layer="projection")`` (a
    ContrastiveModel) or :func:`predict_age` (a RegressionModel) return, for half the cost
    of calling both: every trained run of the book stores both for every image.

    Parameters
    ----------
    model : ContrastiveModel or RegressionModel
    cohort, indices, batch_size, device, amp, channels_last
        As :func:`embed`.

    Returns
    -------
    features : numpy.ndarray of shape (n, F), float32
    output : numpy.ndarray
        Shape ``(n, head_dims[-1])`` float32 projections, or ``(n,)`` float64 ages.
    """
    from brainkit.models import RegressionModel

    base = unwrap_model(model)
    if not hasattr(base, "features_and_output"):
        raise TypeError(f"model {type(base).__name__} has no features_and_output(x) method")

    def both(m, x):
        features, out = m.features_and_output(x)
        return torch.cat([_at_least_2d(features.float()), _at_least_2d(out.float())], dim=1)

    joined = _batched(model, cohort, indices, batch_size, device, amp, channels_last, both)
    width = joined.shape[1] - (1 if isinstance(base, RegressionModel) else base.out_features)
    features, out = joined[:, :width], joined[:, width:]
    if isinstance(base, RegressionModel):
        return features, out[:, 0].astype(np.float64)
    return features, out


def _at_least_2d(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(len(t), -1)


def predict_age(model: nn.Module, cohort, indices=None, *, batch_size: int = 32,
                device: str | torch.device | None = None, amp: bool | None = None,
                channels_last: bool | None = None) -> np.ndarray:
    """Ages predicted by a :class:`brainkit.models.RegressionModel`.

    Parameters
    ----------
    model : RegressionModel
        Its forward pass returns ages in years, shape (B,); it must be on ``device``.
    cohort, indices, batch_size, device, amp, channels_last
        As :func:`embed`.

    Returns
    -------
    numpy.ndarray of shape (n,), float64
        Predicted age in years for each requested image.
    """
    from brainkit.models import RegressionModel

    if not isinstance(unwrap_model(model), RegressionModel):
        raise TypeError("predict_age needs a brainkit.models.RegressionModel, got "
                        f"{type(unwrap_model(model)).__name__}")
    out = _batched(model, cohort, indices, batch_size, device, amp, channels_last,
                   lambda m, x: m(x).reshape(-1))
    return out.astype(np.float64)


@torch.no_grad()
def cut_batches(order: np.ndarray, batch_size: int, *, drop_last: bool = False
                ) -> list[np.ndarray]:
    """``order`` cut into batches of ``batch_size``; with ``batch_size > 1``, a last batch of
    one image joins the one before it (train-mode batch norm needs two values per channel, and one image whose last
    feature map is 1 x 1 x 1 has one). ``drop_last`` drops a short last batch instead."""
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    batches = [order[s:s + batch_size] for s in range(0, stop, batch_size)]
    if batch_size > 1 and len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def recalibrate_batchnorm(model: nn.Module, cohort, indices=None, *, batch_size: int = 32,
                          device: str | torch.device | None = None) -> int:
    """Recompute batch-norm running statistics on clean (unaugmented) images.

    Running means and variances are exponential averages collected while the weights move;
    after a short, high-learning-rate run (the CPU ``ci`` profile) they lag the final weights
    and eval-mode outputs drift far from train-mode ones. This pass resets them and
    accumulates exact averages (``momentum=None``) over ``indices`` in train mode with the
    final weights (as ``torch.optim.swa_utils.update_bn`` does). Weights are not changed.

    Parameters
    ----------
    model : torch.nn.Module
        Already on ``device``.
    cohort : brainkit.data.Cohort
    indices : array-like of int, optional
        Images to average over (use the training images; default all).
    batch_size : int, default 32
    device : str or torch.device, optional
        Default: the model's device (:func:`resolve_device`).

    Returns
    -------
    int
        Number of batch-norm layers recalibrated (0 leaves the model untouched).
    """
    model = unwrap_model(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        _check_cohort(cohort, model)
        idx = resolve_indices(indices, len(cohort))
        source = _host_batches(cohort, resolve_device(device, model))
        for batch in cut_batches(np.asarray(idx), batch_size):
            model(source.load(batch))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)
