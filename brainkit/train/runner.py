"""One training run from one :class:`~brainkit.train.config.TrainConfig`: the path every
brainkit entry point takes (the book's runs, ``brainkit train``, sweeps), so they train
identical models.

:func:`train_run` builds the model from the configuration (initialised from its seed),
trains it with :func:`brainkit.train.fit` and, when the configuration asks for it,
recalibrates the batch-norm statistics on the clean training images; the recalibrated
weights replace the model state of the run's final checkpoint, so :func:`load_model` of the
run folder returns exactly the model that was evaluated.
"""

from __future__ import annotations

import numpy as np

from .checkpoint import CHECKPOINT_NAME, atomic_save, load_checkpoint
from .config import TrainConfig
from .inference import recalibrate_batchnorm, resolve_device, resolve_indices
from .loop import FitResult, fit
from .runs import read_run_config, write_run_config

__all__ = ["train_run"]


def train_run(cohort, config: TrainConfig, *, out_dir, indices=None, device=None,
              resume: bool = False, progress: bool = False, **fit_options) -> FitResult:
    """Train the run ``config`` on ``cohort`` into ``out_dir``.

    Parameters
    ----------
    cohort : brainkit.data.Cohort
    config : TrainConfig
    out_dir : path-like
        The run folder (``config.json``, ``checkpoint.pt``, ``metrics.parquet``).
    indices : array-like of int, optional
        Training positions (default: every image), sorted before training.
    device : str or torch.device, optional
        Default: CUDA when available, else the CPU.
    resume : bool, default False
        Continue the run in ``out_dir`` (see :func:`brainkit.train.fit`).
    progress : bool, default False
    **fit_options
        Other keyword arguments of :func:`brainkit.train.fit` that do not change what is
        learnt on a CPU (``amp``, ``channels_last``, ``data_path``, ``prefetch``, ...).

    Returns
    -------
    FitResult
        ``model`` is the trained (and recalibrated) model, on ``device``, in eval mode.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a brainkit.train.TrainConfig, got "
                        f"{type(config).__name__}")
    idx = np.sort(resolve_indices(indices, len(cohort), "indices"))
    device = resolve_device(device)
    config = config.for_grid(cohort.grid_shape, cohort.affine)
    model = config.build_model()
    result = fit(model, cohort, config, out_dir=out_dir, indices=idx, device=device,
                 resume=resume, progress=progress, **fit_options)
    if config.recalibrate_bn:
        if recalibrate_batchnorm(result.model, cohort, idx, device=device):
            _store_final_weights(result)
    result.model.eval()
    return result


def _store_final_weights(result: FitResult) -> None:
    """Put the recalibrated model state into the run's final checkpoint (and say so)."""
    if not result.out_dir.joinpath(CHECKPOINT_NAME).exists():    # a non-main rank
        return
    path = result.out_dir / CHECKPOINT_NAME
    state = load_checkpoint(path)
    state["model"] = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    atomic_save(state, path)
    config = read_run_config(result.out_dir)
    config["batchnorm_recalibrated"] = True
    write_run_config(result.out_dir, config)
