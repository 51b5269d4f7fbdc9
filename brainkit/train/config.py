"""One value for one training run: :class:`TrainConfig`.

Everything that defines a training run's trajectory, and nothing else: the model, the loss,
the optimiser and its schedule, the views and augmentation, the seed, the post-training
batch-norm recalibration. :func:`brainkit.train.fit` trains one; ``config.json``, the results
store's key, the resume check and ``brainkit train`` all serialise this one object with one
set of key names (:meth:`TrainConfig.to_dict`). How fast a run goes (device, bf16,
channels-last, data path, prefetch) is not part of it: those are :func:`fit`'s keyword
arguments and do not change what is learnt on a CPU.

Examples
--------
>>> cfg = TrainConfig(loss="exp", loss_kwargs={"sigma": 5.0}, epochs=20, lr=2e-3,
...                   model={"kind": "contrastive", "widths": (8, 16, 32, 64),
...                          "head_dims": (64, 32)})
>>> cfg.n_views, cfg.to_dict()["model"]["widths"]
(2, [8, 16, 32, 64])
>>> TrainConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._util import check_int

__all__ = ["TrainConfig", "LR_SCHEDULES", "AUGMENTATIONS"]

#: Learning-rate schedules (see :func:`brainkit.train.loop.lr_factor`).
LR_SCHEDULES = ("step", "cosine")
#: Named augmentations (see :func:`brainkit.data.augment.augmentation`).
AUGMENTATIONS = ("none", "crop", "cutout", "all")


class FrozenDict(dict):
    """A read-only, hashable, picklable dict (the mappings inside a :class:`TrainConfig`)."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a TrainConfig is frozen: use TrainConfig.replace(...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse

    def __hash__(self):
        return hash(tuple(sorted(self.items())))

    def __reduce__(self):
        return (FrozenDict, (dict(self),))


def _freeze(value):
    """Mappings -> read-only dicts, lists -> tuples (recursively): hashable, immutable."""
    if isinstance(value, Mapping):
        return FrozenDict({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value):
    """The JSON form: mappings -> dicts, tuples -> lists."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


def check_float(name: str, value, *, positive: bool = False,
                non_number: type[Exception] = ValueError) -> float:
    """``value`` as a finite ``float`` ``>= 0`` (``> 0`` when ``positive``); ``non_number`` is
    raised for what is not a number at all."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise non_number(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, "
                         f"got {value!r}")
    return v


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (the paper's protocol by default).

    Parameters
    ----------
    loss : str
        A name for :func:`brainkit.losses.make_loss` (``"yaware"``, ``"threshold"``,
        ``"exp"``, ``"rnc"``, ``"adapn"``) or ``"l1"``: the regression baseline.
    loss_kwargs : mapping
        Keyword arguments of ``make_loss`` (``"l1"`` takes none).
    model : mapping
        Keyword arguments of :func:`brainkit.models.build_model` (``kind``, ``depth``,
        ``widths``, ``head_dims`` or ``target_mean`` / ``target_scale``, ...).
    epochs, batch_size, lr, weight_decay : int, int, float, float
        Adam (L2 weight decay, as ``torch.optim.Adam``) for ``epochs`` epochs of global
        batches of ``batch_size`` images. The paper: 300, 32, 1e-4, 5e-5.
    lr_schedule : {"step", "cosine"}
        ``"step"``: times ``lr_gamma`` every ``lr_step`` epochs (the paper: 0.9, 10);
        ``"cosine"``: a half cosine to 0 over the epochs after the warm-up.
    lr_step, lr_gamma, warmup_epochs : int, float, int
        ``warmup_epochs`` (< ``epochs``) of linear warm-up before either schedule.
    n_views : int, optional
        Augmented views per image in one forward pass; default 1 for ``"l1"``, 2 otherwise.
    augmentation : {"none", "crop", "cutout", "all"}
    drop_last : bool
        Drop each epoch's last batch when smaller than ``batch_size``.
    adapn_final_k, adapn_step : int
        AdapN's neighbourhood schedule (the released defaults 4 and 0: off).
    recalibrate_bn : bool
        After training, recompute batch-norm statistics on the clean training images
        (:func:`brainkit.train.recalibrate_batchnorm`; :func:`brainkit.train.train_run`
        does it).
    seed : int
        Seeds the model's initialisation (:meth:`build_model`), the batch order and every
        augmentation.

    Notes
    -----
    Frozen: change a copy with :meth:`replace`. Mappings are stored read-only and lists as
    tuples, so two equal configurations compare and hash equal.
    """

    loss: str = "exp"
    loss_kwargs: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 300
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 5e-5
    lr_schedule: str = "step"
    lr_step: int = 10
    lr_gamma: float = 0.9
    warmup_epochs: int = 0
    n_views: int | None = None
    augmentation: str = "crop"
    drop_last: bool = False
    adapn_final_k: int = 4
    adapn_step: int = 0
    recalibrate_bn: bool = False
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.loss, str) or not self.loss:
            raise ValueError(f"TrainConfig.loss must be a loss name, got {self.loss!r}")
        set_ = object.__setattr__
        set_(self, "loss", self.loss.lower())
        if not isinstance(self.loss_kwargs, Mapping):
            raise ValueError(f"TrainConfig.loss_kwargs must be a mapping, got "
                             f"{type(self.loss_kwargs).__name__}")
        if self.loss == "l1" and self.loss_kwargs:
            raise ValueError(f"TrainConfig: loss 'l1' takes no loss_kwargs, got "
                             f"{dict(self.loss_kwargs)}")
        if not isinstance(self.model, Mapping):
            raise ValueError(f"TrainConfig.model must be a mapping of build_model arguments, "
                             f"got {type(self.model).__name__}")
        set_(self, "loss_kwargs", _freeze(self.loss_kwargs))
        set_(self, "model", _freeze(self.model))
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("lr_step", 1),
                              ("warmup_epochs", 0), ("adapn_final_k", 1), ("adapn_step", 0),
                              ("seed", 0)):
            set_(self, name, check_int(f"TrainConfig.{name}", getattr(self, name), minimum))
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"TrainConfig.warmup_epochs ({self.warmup_epochs}) must be smaller "
                             f"than epochs ({self.epochs})")
        set_(self, "lr", check_float("TrainConfig.lr", self.lr, positive=True))
        set_(self, "weight_decay", check_float("TrainConfig.weight_decay", self.weight_decay,
                                                positive=False))
        set_(self, "lr_gamma", check_float("TrainConfig.lr_gamma", self.lr_gamma, positive=True))
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, got "
                             f"{self.lr_schedule!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"TrainConfig.augmentation must be one of {AUGMENTATIONS}, got "
                             f"{self.augmentation!r}")
        views = (1 if self.loss == "l1" else 2) if self.n_views is None else self.n_views
        set_(self, "n_views", check_int("TrainConfig.n_views", views, 1))
        for name in ("drop_last", "recalibrate_bn"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig.{name} must be True or False, got "
                                 f"{getattr(self, name)!r}")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """The JSON form (the key names of ``config.json`` and of the results store)."""
        return {f.name: _thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping) -> TrainConfig:
        """Rebuild from :meth:`to_dict`; unknown keys are refused (they would be ignored)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"TrainConfig.from_dict needs a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig setting(s) {unknown}; known: {sorted(names)}")
        return cls(**dict(data))

    def key(self) -> str:
        """A short stable hash of :meth:`to_dict` (identical settings, identical key)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self, **changes) -> TrainConfig:
        """A copy with some settings changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown TrainConfig setting(s) {sorted(unknown)}")
        if "loss" in changes and "n_views" not in changes:
            changes["n_views"] = None          # re-derive the default for the new loss
        return dataclasses.replace(self, **changes)

    def for_grid(self, shape, affine) -> TrainConfig:
        """This configuration on a grid: ``model["input_box"] == "brain"`` becomes the brain's
        voxel box there (:func:`brainkit.models.brain_input_box`: widened so that the encoder's
        last feature map keeps the whole image's shape; ``None``, the whole image, on a grid
        outside MNI space); otherwise ``self``.

        A profile asks for ``"brain"``; a run's store key
        (:func:`brainkit.experiments.pipeline.train_config`) and its own ``config.json``
        record the box, so :func:`brainkit.train.load_model` rebuilds the same crop.
        """
        if self.model.get("input_box") != "brain":
            return self
        from brainkit.models import brain_input_box

        return self.replace(model={**_thaw(self.model),
                                   "input_box": brain_input_box(shape, affine)})

    # ------------------------------------------------------------------ builders
    def build_model(self):
        """A fresh model of ``model``, initialised from ``seed`` (torch's global generator)."""
        import torch

        from brainkit.models import build_model

        if not self.model:
            raise ValueError("TrainConfig.model is empty: give the build_model arguments")
        if self.model.get("input_box") == "brain":
            raise ValueError("TrainConfig.model has input_box 'brain': resolve it on the "
                             "images' grid first (config.for_grid(shape, affine); train_run "
                             "and fit do)")
        torch.manual_seed(self.seed)
        return build_model(**_thaw(self.model))

    def make_loss(self):
        """The loss module (``None`` for ``"l1"``, the regression baseline)."""
        if self.loss == "l1":
            return None
        from brainkit.losses import make_loss

        return make_loss(self.loss, **_thaw(self.loss_kwargs))
