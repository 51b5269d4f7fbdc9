"""The training engine: the paper's protocol, checkpoints, several GPUs, inference.

- :class:`TrainConfig`: everything that defines a training run, one frozen value;
  :func:`train_run`: build, train and (if asked) recalibrate one run of it, the path every
  brainkit entry point takes.
- :func:`fit`: train a contrastive model (any loss of :mod:`brainkit.losses`) or the L1
  regression baseline; resumable (checkpoint every epoch and on SIGTERM / SIGINT),
  bf16 / channels-last / fused Adam on CUDA, DistributedDataParallel under ``torchrun``.
- :func:`embed`, :func:`predict_age`, :func:`embed_and_predict`: batched, gradient-free
  inference on a cohort.
- :func:`save_model`, :func:`load_model`: run directories (``config.json`` +
  ``checkpoint.pt``) from which :func:`brainkit.models.build_model` rebuilds a model.
"""

from .checkpoint import CHECKPOINT_NAME, atomic_save, atomic_write, load_checkpoint
from .config import TrainConfig
from .inference import embed, embed_and_predict, predict_age, recalibrate_batchnorm
from .loop import (
    METRICS_NAME,
    FitResult,
    TrainingInterrupted,
    augment_views,
    batch_loss,
    epoch_batches,
    fit,
    view_seed,
)
from .runner import train_run
from .runs import CONFIG_NAME, load_model, model_config, read_run_config, save_model

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "METRICS_NAME",
    "FitResult",
    "TrainConfig",
    "TrainingInterrupted",
    "atomic_save",
    "atomic_write",
    "augment_views",
    "batch_loss",
    "embed",
    "epoch_batches",
    "fit",
    "load_checkpoint",
    "load_model",
    "model_config",
    "predict_age",
    "embed_and_predict",
    "read_run_config",
    "recalibrate_batchnorm",
    "save_model",
    "train_run",
    "view_seed",
]
