"""The training loop: the paper's protocol, resumable, on CPU, one GPU or several (torchrun).

Protocol defaults (Barbano et al., Sec. "Experimental protocol"): Adam, learning rate 1e-4,
weight decay 5e-5, learning rate x0.9 every 10 epochs, batch 32, 300 epochs, two augmented
views of every image in one forward pass. Without augmentation the views are copies, and
the model runs once per image (:func:`batch_loss` ``shared_views``): same loss and gradients.

Reproducibility contract
------------------------
- The order of the training images in epoch ``e`` is a permutation drawn from ``(seed, e)``
  only (:func:`epoch_batches`).
- The augmentation of view ``v`` of image ``i`` in epoch ``e`` uses a generator seeded from
  ``(seed, e, i, v)`` only, so it does not depend on batch composition, on the number of
  processes, or on where a run was interrupted.
- Checkpoints hold the model, optimiser, scheduler, epoch, step and the global random states
  (Python, NumPy, torch CPU and CUDA). A run interrupted at any step boundary and resumed
  ends, on CPU, bit-identical to an uninterrupted one.

Reliability contract
--------------------
- The run directory is locked for the whole fit (:class:`brainkit._util.FolderLock`): a
  second ``fit`` into it refuses at once, naming the pid; the kernel drops the lock of a
  killed process, so a resume is never blocked.
- The cohort is re-read before training (``Cohort.verify``: NaN / inf and content hash), so
  a resume on an edited cohort is refused.
- A NaN / inf loss or gradient stops the run (:class:`brainkit.errors.NonFiniteError`,
  naming epoch and step) before anything poisoned is saved; a checkpoint holding NaN / inf
  is not resumed.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .._util import FolderLock, SignalFlag
from ..errors import FolderLockedError, InputError, NonFiniteError
from .config import LR_SCHEDULES, TrainConfig, check_float, check_int
from .checkpoint import CHECKPOINT_NAME, atomic_save, atomic_write, load_checkpoint, \
    nonfinite_tensors, rng_state, \
    set_rng_state
from .distributed import DistInfo, gather_views, setup_distributed, shard, shard_sizes, \
    teardown_distributed
from .inference import cut_batches, embed, resolve_device, resolve_indices, unwrap_model
from .runs import model_config as describe_model
from .runs import read_run_config, write_run_config

__all__ = [
    "FitResult",
    "METRICS_NAME",
    "TrainingInterrupted",
    "augment_views",
    "batch_loss",
    "epoch_batches",
    "fit",
    "lr_factor",
    "LR_SCHEDULES",
    "view_seed",
]

#: File name of the per-epoch metrics table inside a run directory.
METRICS_NAME = "metrics.parquet"

_CHECKPOINT_FORMAT = 1
# Settings that must not change when a run is resumed (they define the trajectory).
_RESUME_KEYS = ("batch_size", "n_views", "augmentation", "seed", "drop_last", "lr",
                "weight_decay", "lr_step", "lr_gamma", "lr_schedule", "warmup_epochs",
                "adapn_final_k", "adapn_step")
_RESUME_DEFAULTS = {"lr_schedule": "step", "warmup_epochs": 0}
# Tags separating the random streams derived from the seed.
_ORDER_STREAM, _AUGMENT_STREAM = 1, 2


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGTERM / SIGINT after writing a checkpoint.

    Attributes
    ----------
    signal_number : int
    epoch : int
        Epochs completed before the interruption.
    step : int
        Batches of the current epoch completed.
    checkpoint : pathlib.Path
        Where the state was written; ``fit(..., resume=True)`` continues from it.
    """

    def __init__(self, signal_number: int, epoch: int, step: int, checkpoint: Path):
        self.signal_number = signal_number
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint
        name = signal.Signals(signal_number).name
        super().__init__(f"training interrupted by {name} after {epoch} epoch(s) and {step} "
                         f"step(s) of the next; checkpoint written to {checkpoint}; continue "
                         "with resume=True (CLI: --resume)")


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    model : torch.nn.Module
        The trained model (the object passed in, trained in place, on the training device).
    metrics : pandas.DataFrame
        One row per epoch: ``epoch`` (1-based), ``loss`` (mean over the epoch's batches),
        ``lr`` (learning rate used in the epoch), ``seconds`` (training time of the epoch),
        ``volumes_per_s`` (volumes through the model per second, all processes; without
        augmentation the views share one pass, so a contrastive run counts each image once),
        plus ``neighbourhood_size`` for AdapN and ``probe_age_mae`` / ``probe_site_bacc``
        when probes run (NaN in epochs without a probe). Also in ``out_dir/metrics.parquet``.
    out_dir : pathlib.Path
        The run directory (``config.json``, ``checkpoint.pt``, ``metrics.parquet``).
    epochs_completed : int
    config : dict
        What was written to ``out_dir/config.json`` (model, loss, training, data).
    data_path : str
        The data path used, ``"memmap"`` or ``"resident"`` (``fit``'s ``data_path`` resolved).
    """

    model: nn.Module
    metrics: pd.DataFrame
    out_dir: Path
    epochs_completed: int
    config: dict = field(default_factory=dict)
    data_path: str = "memmap"


# --------------------------------------------------------------------------- randomness
def epoch_batches(indices, *, batch_size: int, seed: int, epoch: int,
                  drop_last: bool = False) -> list[np.ndarray]:
    """The global batches of one epoch: a permutation drawn from ``(seed, epoch)``, cut.

    Parameters
    ----------
    indices : array-like of int, shape (n,)
        Training positions in the cohort.
    batch_size : int
        Global batch size.
    seed, epoch : int
        ``epoch`` is 0-based.
    drop_last : bool, default False
        Drop a final batch smaller than ``batch_size``. Otherwise a final batch of one image
        joins the batch before it (:func:`cut_batches`: batch norm in train mode needs more
        than one value per channel).

    Returns
    -------
    list of numpy.ndarray
        Batches of positions; together a permutation of ``indices`` (minus the dropped tail).
    """
    idx = np.asarray(indices, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _ORDER_STREAM, epoch]))
    return cut_batches(idx[rng.permutation(len(idx))], batch_size, drop_last=drop_last)


def view_seed(seed: int, epoch: int, index: int, view: int) -> int:
    """Seed of the augmentation generator for view ``view`` of image ``index`` in ``epoch``.

    Returns
    -------
    int
        In ``[0, 2**63)``, a function of the four arguments only.
    """
    state = np.random.SeedSequence([seed, _AUGMENT_STREAM, epoch, int(index), view])
    hi, lo = state.generate_state(2, dtype=np.uint32)
    return (int(hi) << 31) ^ int(lo)


def _cat_params(parts: list, device: torch.device):
    """Concatenate per-image augmentation parameters (tensors, dicts, lists) along dim 0 and
    move them to ``device`` (one copy per tensor, not one per image)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, dim=0).to(device, non_blocking=True)
    if isinstance(first, dict):
        return {k: _cat_params([p[k] for p in parts], device) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_cat_params([p[i] for p in parts], device) for i in range(len(first)))
    raise TypeError(f"augmentation parameters must be tensors, dicts or lists, got "
                    f"{type(first).__name__}")


def augment_views(x: torch.Tensor, indices, augment: Callable | None, *, n_views: int,
                  seed: int, epoch: int) -> torch.Tensor:
    """Build ``n_views`` augmented views of a batch, view-major.

    Parameters
    ----------
    x : torch.Tensor of shape (b, C, X, Y, Z)
        The batch on its training device.
    indices : array-like of int, shape (b,)
        Cohort positions of the rows of ``x`` (they key the augmentation generators).
    augment : callable or None
        A :class:`brainkit.data.augment.RandomTransform` (``sample`` / ``apply``), any
        callable ``augment(x, generator=g)``, or ``None`` (views are copies of ``x``).
    n_views : int
    seed, epoch : int

    Returns
    -------
    torch.Tensor of shape (n_views * b, C, X, Y, Z)
        Rows ``v * b + j`` hold view ``v`` of image ``indices[j]``. Its random parameters
        come from a generator seeded by :func:`view_seed` ``(seed, epoch, indices[j], v)``,
        so an image's views do not depend on the batch or process it lands in. For a
        ``RandomTransform`` the parameters are drawn per image on the CPU (the same on every
        device), stacked, moved to ``x.device`` and applied to the whole batch at once; another callable is called
        once per image with a generator on ``x.device``.
    """
    if augment is None:
        return x.repeat((n_views,) + (1,) * (x.dim() - 1))
    batched = callable(getattr(augment, "sample", None)) and callable(getattr(augment, "apply",
                                                                              None))
    one = (1,) + tuple(x.shape[1:])
    views = []
    for v in range(n_views):
        gens = []
        for index in indices:
            g = torch.Generator(device="cpu" if batched else x.device)
            g.manual_seed(view_seed(seed, epoch, int(index), v))
            gens.append(g)
        if batched:
            params = _cat_params([augment.sample(one, generator=g, device="cpu")
                                  for g in gens], x.device)
            views.append(augment.apply(x, params))
        else:
            views.append(torch.cat([augment(x[j:j + 1], generator=g)
                                    for j, g in enumerate(gens)], dim=0))
    return torch.cat(views, dim=0)


def lr_factor(schedule: str, *, epochs: int, warmup_epochs: int = 0, lr_step: int = 10,
              lr_gamma: float = 0.9) -> Callable[[int], float]:
    """The learning-rate multiplier of each epoch (0-based) for :func:`fit`'s schedules.

    ``"step"``: ``lr_gamma ** (e // lr_step)`` (``StepLR``); ``"cosine"``:
    ``0.5 (1 + cos(pi (e - w) / (epochs - w)))`` after ``w = warmup_epochs``. During the
    warm-up (``e < w``) either is ``(e + 1) / (w + 1)``.

    Examples
    --------
    >>> f = lr_factor("cosine", epochs=4)
    >>> [round(f(e), 3) for e in range(4)]
    [1.0, 0.854, 0.5, 0.146]
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        if schedule == "step":
            return lr_gamma ** (epoch // lr_step)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs)
                                     / max(epochs - warmup_epochs, 1)))

    return factor


# --------------------------------------------------------------------------- one step
def batch_loss(module: nn.Module, loss_fn: Callable | None, x: torch.Tensor, y: torch.Tensor, *,
               n_views: int, sizes=None, amp: bool = False,
               shared_views: bool = False) -> torch.Tensor:
    """Loss of one global batch: one forward pass of all views, gathered across ranks.

    Parameters
    ----------
    module : torch.nn.Module
        The (possibly DistributedDataParallel-wrapped) model.
    loss_fn : callable or None
        ``loss_fn(z, y)`` with ``z`` of shape (N, D), ``y`` of shape (N,); ``None`` means the
        L1 baseline: mean absolute error between the model's outputs (ages, shape (N,))
        and ``y``.
    x : torch.Tensor of shape (n_views * b, C, X, Y, Z)
        This process's views, view-major (:func:`augment_views`).
    y : torch.Tensor of shape (n_views * B,)
        Labels of the *global* batch, view-major (``B = sum(sizes)``).
    n_views : int
    sizes : sequence of int, optional
        Samples held by each process (:func:`brainkit.train.distributed.shard_sizes`); with
        more than one entry the outputs are all-gathered with gradients
        (:func:`brainkit.train.distributed.gather_views`). ``None``: one process.
    amp : bool, default False
        Run the forward pass under bf16 autocast; the loss is computed in float32.
    shared_views : bool, default False
        ``x`` holds the batch once and every view is that copy (no augmentation): the model
        runs on it once and its outputs are repeated ``n_views`` times, view-major. The loss
        and its gradients are those of the full pass (a model without randomness maps equal
        inputs to equal outputs, and batch norm's statistics of a batch repeated ``n_views``
        times are the batch's own), at ``1 / n_views`` of the cost. Only batch norm's
        running variance differs, by its ``n / (n - 1)`` factor.

    Returns
    -------
    torch.Tensor
        Scalar loss of the global batch (the same on every process).
    """
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = module(x)
    out = out.float()
    if shared_views and n_views > 1:
        out = out.repeat((n_views,) + (1,) * (out.dim() - 1))
    if sizes is not None and len(sizes) > 1:
        out = gather_views(out, sizes, n_views)
    if out.shape[0] != y.shape[0]:
        raise ValueError(f"the model produced {out.shape[0]} rows for {y.shape[0]} labels")
    if loss_fn is None:
        return F.l1_loss(out.reshape(-1), y)
    return loss_fn(out, y)


# --------------------------------------------------------------------------- helpers
def _any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (one tiny all-reduce per call)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _resolve_loss(loss, loss_kwargs) -> tuple[nn.Module | None, dict]:
    if isinstance(loss, str):
        name = loss.lower()
        if name == "l1":
            if loss_kwargs:
                raise ValueError(f"loss='l1' takes no loss_kwargs, got {loss_kwargs}")
            return None, {"name": "l1", "kwargs": {}}
        from brainkit.losses import make_loss

        kwargs = dict(loss_kwargs or {})
        return make_loss(name, **kwargs), {"name": name, "kwargs": kwargs}
    if isinstance(loss, nn.Module):
        if loss_kwargs:
            raise ValueError("loss_kwargs only applies when loss is given by name")
        return loss, {"name": type(loss).__name__, "kwargs": None, "repr": _describe(loss)}
    raise TypeError("loss must be a name for brainkit.losses.make_loss, 'l1', or a "
                    f"torch.nn.Module, got {type(loss).__name__}")


def _describe(obj) -> str:
    """A stable description for config.json (no memory addresses, so resumes compare)."""
    text = repr(obj)
    if " at 0x" in text:
        kind = type(obj)
        text = f"{kind.__module__}.{kind.__qualname__}"
    return text


def _resolve_augmentation(augmentation) -> tuple[Callable | None, str]:
    if augmentation is None or augmentation == "none":
        return None, "none"
    if isinstance(augmentation, str):
        from brainkit.data.augment import augmentation as make_augmentation

        return make_augmentation(augmentation), augmentation
    if callable(augmentation) or (callable(getattr(augmentation, "sample", None))
                                  and callable(getattr(augmentation, "apply", None))):
        return augmentation, _describe(augmentation)
    raise TypeError("augmentation must be a name for brainkit.data.augment.augmentation, None, "
                    "a transform with sample() / apply(), or a callable aug(x, generator=g); "
                    f"got {type(augmentation).__name__}")


def _adapn_hook(loss_fn, *, batch_size: int, n_views: int, epochs: int, final_k: int,
                step: int):
    """A per-epoch neighbourhood-size setter for an AdapN loss, else ``None``.

    With ``step == 0`` (the released default) the schedule is off and the loss keeps the
    ``neighbourhood_size`` it was built with; the setter then only reports it.
    """
    from brainkit.losses import AdapNLoss, adapn_neighbourhood

    if not isinstance(loss_fn, AdapNLoss):
        return None

    def update(epoch: int) -> float:
        if step > 0:
            loss_fn.neighbourhood_size = adapn_neighbourhood(
                epoch + 1, batch_size=batch_size, n_views=n_views, final_k=final_k, step=step,
                epochs=epochs)
        size = loss_fn.neighbourhood_size
        return math.nan if size is None else float(size)

    return update


def _probe(model, cohort, indices, *, seed, batch_size, device, amp, channels_last) -> dict:
    """Cross-validated monitoring probes on a held-out set (not the paper's evaluation)."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import balanced_accuracy_score, mean_absolute_error
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    z = embed(model, cohort, indices, batch_size=batch_size, device=device, amp=amp,
              channels_last=channels_last).astype(np.float64)
    table = cohort.table.iloc[indices]
    age = table["age"].to_numpy(dtype=np.float64)
    folds = min(5, len(indices))
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 2, 5)))
    pred = cross_val_predict(ridge, z, age, cv=KFold(folds, shuffle=True, random_state=seed))
    out = {"probe_age_mae": float(mean_absolute_error(age, pred)), "probe_site_bacc": math.nan}
    site = table["site"].astype(str).to_numpy()
    _, counts = np.unique(site, return_counts=True)
    if len(counts) >= 2 and counts.min() >= 2:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        cv = StratifiedKFold(min(5, int(counts.min())), shuffle=True, random_state=seed)
        out["probe_site_bacc"] = float(balanced_accuracy_score(
            site, cross_val_predict(clf, z, site, cv=cv)))
    return out


def _write_metrics(out_dir: Path, history: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(history)
    if len(table):
        table["epoch"] = table["epoch"].astype("int64")
    buffer = BytesIO()
    table.to_parquet(buffer, index=False)
    atomic_write(out_dir / METRICS_NAME, lambda fh: fh.write(buffer.getvalue()))
    return table


def _check_resume_config(path: Path, saved: dict, current: dict) -> None:
    current = json.loads(json.dumps(current, default=repr))  # compare as written to disk
    problems = []
    for key in _RESUME_KEYS:
        # runs written before a setting existed trained with its default
        was = saved.get("training", {}).get(key, _RESUME_DEFAULTS.get(key))
        if was != current["training"].get(key):
            problems.append(f"training.{key}: saved {was!r}, now {current['training'].get(key)!r}")
    if saved.get("loss") != current["loss"]:
        problems.append(f"loss: saved {saved.get('loss')!r}, now {current['loss']!r}")
    saved_data = dict(saved.get("data") or {})
    now_data = dict(current["data"])
    before, after = saved_data.pop("cohort_hash", None), now_data.pop("cohort_hash", None)
    if "grid_affine" not in saved_data:     # runs written before brainkit recorded it
        now_data.pop("grid_affine", None)
    if before != after:
        problems.append(f"the cohort's content differs from the one the run was trained on "
                        f"(content hash saved {str(before)[:12]}..., now {str(after)[:12]}...: "
                        "an edited or another cohort)")
    if saved_data != now_data:
        problems.append(f"data: saved {saved_data!r}, now {now_data!r}")
    if saved.get("model") is not None and current.get("model") is not None \
            and saved["model"] != current["model"]:
        problems.append(f"model: saved {saved['model']!r}, now {current['model']!r}")
    if "train" in saved and "train" in current:      # the TrainConfig, except its length
        for key in sorted(set(saved["train"]) | set(current["train"])):
            was, now = saved["train"].get(key), current["train"].get(key)
            if key != "epochs" and was != now and f"training.{key}" not in " ".join(problems):
                problems.append(f"train.{key}: saved {was!r}, now {now!r}")
    if problems:
        raise InputError(f"cannot resume {path}: the run was started with other settings: "
                         + "; ".join(problems) + " (start a new run in another folder)")


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping this run's kernel and layouts.

    ``load_state_dict`` takes ``fused`` / ``foreach`` from the saved groups and keeps the
    saved moments' memory layout. A GPU checkpoint (fused, channels-last) resumed on the CPU
    would then run the fused kernel on moments laid out unlike the parameters (silently
    wrong updates on the CPU; a layout error on CUDA), and a CPU checkpoint resumed on a GPU
    would not be fused. So the current flags are restored, ``step`` is put where the current
    kernel keeps it, and every moment takes its parameter's layout (values unchanged).
    """
    flags = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g}
             for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, saved in zip(optimizer.param_groups, flags):
        group.update(saved)
        on_device = bool(group.get("fused")) or bool(group.get("capturable"))
        for p in group["params"]:
            for key, value in list(optimizer.state.get(p, {}).items()):
                if not isinstance(value, torch.Tensor):
                    continue
                if key == "step":
                    optimizer.state[p][key] = value.to(p.device, torch.float32) if on_device \
                        else value.cpu()
                elif value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype) \
                        .copy_(value)


def _indices_digest(indices: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


#: On CUDA, steps between two checks of the loss and gradients for NaN / inf (a check is one
#: device sync); on the CPU every step is checked, before its update.
_FINITE_CHECK_EVERY = 16


class _FiniteWatch:
    """Watches each step's loss and gradients for NaN / inf.

    On the CPU the check runs every step before the optimiser's update (a sync costs
    nothing there), so the model is never updated with a bad gradient. On CUDA the first bad
    step is recorded on the device and checked every :data:`_FINITE_CHECK_EVERY` steps and
    before every checkpoint, so no poisoned state reaches the disk and the GPU is not
    synchronised each step.
    """

    def __init__(self, params, *, info: DistInfo, device: torch.device, steps_per_epoch: int,
                 lr: float, out_dir: Path):
        self.params = [p for p in params if p.requires_grad]
        self.info, self.device = info, device
        self.eager = device.type != "cuda"
        self.steps_per_epoch = steps_per_epoch
        self.lr, self.out_dir = lr, out_dir
        self._first = torch.full((), -1, dtype=torch.int64, device=device)

    def _finite(self, value: torch.Tensor) -> torch.Tensor:
        ok = torch.isfinite(value.detach())
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            if hasattr(torch, "_foreach_norm"):  # one fused kernel; inf-norm: no overflow
                norms = torch._foreach_norm(grads, math.inf)
            else:  # pragma: no cover - old torch
                norms = [g.detach().abs().amax() for g in grads]
            ok = ok & torch.isfinite(torch.stack([n.float() for n in norms])).all()
        return ok

    def _error(self, epoch: int, step: int) -> NonFiniteError:
        return NonFiniteError(
            f"training stopped: the loss or its gradients became NaN or infinite at epoch "
            f"{epoch + 1}, step {step + 1} of {self.steps_per_epoch}; nothing after that was "
            f"saved ({self.out_dir} keeps its last checkpoint). Usual causes: a learning rate "
            f"too high (lr={self.lr:g}: start a new run with a lower one) or images with "
            "extreme values (brainkit data info re-reads the cohort)")

    def record(self, value: torch.Tensor, epoch: int, step: int) -> None:
        """After ``backward()``, before ``optimizer.step()``."""
        ok = self._finite(value)
        if self.eager:
            if _any_rank(not bool(ok), self.info, self.device):
                raise self._error(epoch, step)
            return
        code = torch.full_like(self._first, epoch * self.steps_per_epoch + step)
        self._first = torch.where((self._first < 0) & ~ok, code, self._first)

    def check(self) -> None:
        """Raise if a recorded step was not finite (one sync on CUDA)."""
        if self.eager:
            return
        first = int(self._first.item())
        if _any_rank(first >= 0, self.info, self.device):
            if first < 0:  # another rank saw it (ranks share losses and gradients)
                first = 0
            raise self._error(*divmod(first, self.steps_per_epoch))


class _RunLock:
    """``out_dir``'s lock, held by rank 0 from the start of the fit to its end.

    Taken first, so a second fit into a folder in use is refused at once, naming the pid,
    before any other check. Under torchrun the other ranks learn of a refusal at
    :meth:`confirm` (one collective, after the read-only checks every rank does), so all
    ranks raise together instead of waiting for rank 0 in a collective.
    """

    def __init__(self, out_dir: Path, info: DistInfo):
        self.out_dir, self.info = out_dir, info
        self.created = not out_dir.exists()
        self.lock, self.refused = None, None
        if info.is_main:
            try:
                self.lock = FolderLock(out_dir, what="training run", remove=True).acquire()
            except FolderLockedError as err:
                if not info.distributed:
                    raise
                self.refused = err

    def confirm(self, device: torch.device) -> None:
        """Before the first write: raise on every rank if rank 0 could not lock."""
        if _any_rank(self.refused is not None, self.info, device):
            raise self.refused or FolderLockedError(
                f"{self.out_dir} is in use by another training run (rank 0 could not lock "
                "it)", folder=self.out_dir)

    def release(self) -> None:
        if self.lock is None:
            return
        self.lock.release()
        self.lock = None
        if self.created:  # refused before writing anything: leave no empty folder behind
            try:
                self.out_dir.rmdir()
            except OSError:
                pass


# --------------------------------------------------------------------------- fit
#: The training settings :func:`fit` takes as keyword arguments in its older form (the
#: fields of :class:`~brainkit.train.config.TrainConfig` other than the loss and the model).
_SETTINGS = {"epochs": 300, "batch_size": 32, "lr": 1e-4, "weight_decay": 5e-5, "lr_step": 10,
             "lr_gamma": 0.9, "lr_schedule": "step", "warmup_epochs": 0, "n_views": None,
             "augmentation": "crop", "loss_kwargs": None, "seed": 0, "drop_last": False,
             "adapn_final_k": 4, "adapn_step": 0}


def _settings_of(config, settings: dict) -> tuple[object, dict, dict | None]:
    """(loss, settings, TrainConfig dict or None) from fit's config argument."""
    from .config import AUGMENTATIONS

    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise TypeError(f"fit() got unexpected keyword argument(s) {unknown}")
    if isinstance(config, TrainConfig):
        if settings:
            raise TypeError(f"fit(model, cohort, TrainConfig) takes every training setting "
                            f"from the config; got {sorted(settings)} as well (use "
                            "config.replace(...))")
        values = {k: getattr(config, k) for k in _SETTINGS if k != "loss_kwargs"}
        values["loss_kwargs"] = dict(config.loss_kwargs) or None
        return config.loss, values, config.to_dict()
    values = {**_SETTINGS, **settings}
    record = None
    named = isinstance(config, str) and isinstance(values["augmentation"], str) \
        and values["augmentation"] in AUGMENTATIONS
    if named:   # the older call, expressible as a TrainConfig: record it as one
        try:
            record = TrainConfig(loss=config, loss_kwargs=values["loss_kwargs"] or {},
                                 **{k: v for k, v in values.items() if k != "loss_kwargs"}
                                 ).to_dict()
        except ValueError:
            record = None   # fit's own checks below name the bad setting
    return config, values, record


def fit(model: nn.Module, cohort, config, *, out_dir, indices=None,
        device: str | torch.device | None = None, resume: bool = False, compile: bool = False,
        amp: bool | None = None, channels_last: bool | None = None,
        cudnn_benchmark: bool | None = None, fused: bool | None = None,
        sync_batchnorm: bool = False, probe_every: int = 0, probe_indices=None,
        progress: bool = True, model_config: dict | None = None, handle_signals: bool = True,
        prefetch: bool = True, data_path: str = "auto", **settings) -> FitResult:
    """Train a model on a cohort with the paper's protocol; resumable and distributed.

    ``fit(model, cohort, config, out_dir=...)`` with a :class:`brainkit.train.TrainConfig`
    is the form every brainkit entry point uses (the book, ``brainkit train``, sweeps); the
    older form ``fit(model, cohort, loss, out_dir=..., epochs=..., lr=...)`` takes the loss
    (a name or a module) and the training settings as keyword arguments, with the defaults
    below (the paper's protocol). The run's ``config.json`` records the configuration under
    ``"train"`` (the :meth:`TrainConfig.to_dict` names) whenever it is one.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`brainkit.models.ContrastiveModel` (any model mapping ``(B, 1, X, Y, Z)`` to
        ``(B, D)`` works with a contrastive loss) or, with ``loss="l1"``, a
        :class:`brainkit.models.RegressionModel`. Moved to ``device`` and trained in place.
    cohort : brainkit.data.Cohort
        Labels are ``cohort.table["age"]``. Images are the float32 volumes of
        ``cohort.images(batch)`` with a channel axis added; they are read as stored
        (``cohort.raw_batch``: the uint8 / float16 boxes of a packed cohort, see
        :func:`brainkit.data.packed.pack_cohort`) and decoded and un-cropped on ``device``.
    config : TrainConfig, str or torch.nn.Module
        The run (:class:`brainkit.train.TrainConfig`: its settings replace the keyword
        settings below, which must then not be given). Older form: the loss, a name for
        :func:`brainkit.losses.make_loss` (``"yaware"``, ``"threshold"``, ``"exp"``,
        ``"rnc"``, ``"adapn"``; with ``loss_kwargs``), a loss module ``loss(z, y)``, or
        ``"l1"``: the regression baseline (mean absolute error on age). For an
        :class:`~brainkit.losses.AdapNLoss`, see ``adapn_final_k`` / ``adapn_step``.
    out_dir : path-like
        Run directory; receives ``config.json``, ``checkpoint.pt`` and ``metrics.parquet``.
        Refused if it already holds a checkpoint and ``resume`` is False.
    indices : array-like of int, optional
        Training positions in the cohort (default: all images).
    epochs : int, default 300
    batch_size : int, default 32
        Images per step (global: across all processes). Each image contributes ``n_views``
        rows to the loss.
    lr, weight_decay : float, default 1e-4, 5e-5
        Adam (L2 weight decay, as ``torch.optim.Adam``).
    lr_step, lr_gamma : int, float, default 10, 0.9
        ``StepLR``: the learning rate is multiplied by ``lr_gamma`` every ``lr_step`` epochs.
    lr_schedule : {"step", "cosine"}, default "step"
        ``"step"``: the paper's ``StepLR`` above. ``"cosine"``: after the warm-up, the
        learning rate follows a half cosine from ``lr`` in the first epoch to 0 after the
        last (``lr_step`` / ``lr_gamma`` unused): for short runs, which a step schedule
        leaves far from converged.
    warmup_epochs : int, default 0
        Epochs of linear warm-up (epoch ``e`` < ``warmup_epochs``, 0-based, trains at
        ``lr * (e + 1) / (warmup_epochs + 1)``), before either schedule; must be < ``epochs``.
    n_views : int, optional
        Augmented views per image, concatenated along dim 0 into one forward pass (the loss
        sees ``z`` of shape ``(n_views * B, D)`` and ``y`` of shape ``(n_views * B,)``,
        view-major). Default 2 for contrastive losses, 1 for ``"l1"``.
    augmentation : str, transform, callable or None, default "crop"
        A name for :func:`brainkit.data.augment.augmentation` (``"none"``, ``"crop"``,
        ``"cutout"``, ``"all"``), a transform with ``sample`` / ``apply`` (e.g. a
        :class:`brainkit.data.augment.Compose`), a callable ``aug(x, generator=g)``, or
        ``None`` (no augmentation). Applied on ``device`` with per-image random parameters
        (:func:`augment_views`, :func:`view_seed`).
    loss_kwargs : dict, optional
        Keyword arguments of ``make_loss`` when ``loss`` is a name.
    device : str or torch.device, optional
        Default: CUDA when available, else the CPU
        (:func:`brainkit.train.inference.resolve_device`). ``"cuda"`` under torchrun means
        ``cuda:LOCAL_RANK``.
    seed : int, default 0
        Seeds the global generators at the start of a fresh run, the batch order and the
        augmentations. (Model initialisation happens before ``fit``: seed it yourself.)
    resume : bool, default False
        Continue from ``out_dir/checkpoint.pt`` if it exists (else start fresh). The settings
        that define the trajectory (batch size, views, augmentation, seed, optimiser, loss,
        training indices, cohort) must match ``config.json``; ``epochs`` may grow.
    compile : bool, default False
        Wrap the model in :func:`torch.compile`.
    amp : bool, optional
        bf16 autocast for the forward pass (losses run in float32). Default: on for CUDA.
    channels_last : bool, optional
        ``torch.channels_last_3d`` model and inputs. Default: on for CUDA and the CPU (in
        float32 it is oneDNN's native layout: with a contiguous stem a step of the ``ci``
        model, batch 16, one thread, took 99 instead of 120 ms at 6 mm and 216 instead of
        311 ms at 4 mm; the stem's phase form (:class:`~brainkit.models.StemConv3d`) now
        gives a contiguous model most of that, 82 against 75 ms at 6 mm;
        ``benchmarks/bench_train.py --device cpu --threads 1``).
    cudnn_benchmark : bool, optional
        ``torch.backends.cudnn.benchmark`` during the run (restored after). Default: on for
        CUDA.
    fused : bool, optional
        Fused Adam kernel. Default: on for CUDA and the CPU (on the CPU it saves about
        4 ms of the ~38 ms step of the ``ci`` model: Python's per-parameter loop).
    sync_batchnorm : bool, default False
        Under torchrun, convert batch norm layers to ``SyncBatchNorm`` (CUDA only in
        PyTorch) so that statistics cover the global batch.
    drop_last : bool, default False
        Drop each epoch's last batch when smaller than ``batch_size``.
    adapn_final_k, adapn_step : int, default 4, 0
        AdapN neighbourhood schedule (released defaults ``end_NN_nb=4``,
        ``NN_nb_step_size=0``): with ``adapn_step > 0`` the loss's ``neighbourhood_size`` is
        set at the start of every epoch to ``adapn_neighbourhood(epoch, batch_size=...,
        n_views=..., final_k=adapn_final_k, step=adapn_step, epochs=epochs)``; with 0 the
        loss keeps the size it was built with. Ignored for other losses.
    probe_every : int, default 0
        Every ``probe_every`` epochs (and after the last), embed ``probe_indices`` and record
        ``probe_age_mae`` (5-fold cross-validated ridge, alphas 1e-2..1e2, on the held-out
        set) and ``probe_site_bacc`` (5-fold cross-validated logistic regression, balanced
        accuracy; NaN with fewer than 2 sites of 2+ images). Monitoring only: the paper's
        evaluation is :mod:`brainkit.eval`. 0 disables.
    probe_indices : array-like of int, optional
        Held-out positions for the probes (must not overlap ``indices``).
    progress : bool, default True
        Show a tqdm bar (loss, learning rate, volumes/s) on rank 0.
    model_config : dict, optional
        :func:`brainkit.models.build_model` arguments written to ``config.json``; default
        :func:`brainkit.train.model_config` of ``model`` (``None`` if it cannot describe
        the model; :func:`brainkit.train.load_model` then cannot rebuild it).
    handle_signals : bool, default True
        On SIGTERM / SIGINT, finish the current step, write a checkpoint and raise
        :class:`TrainingInterrupted` (installed from the main thread only).
    prefetch : bool, default True
        With the ``"memmap"`` data path, read (and pin) the next batch's images in a
        background thread while the current step runs.
    data_path : {"auto", "memmap", "resident"}, default "auto"
        Where batches come from (:func:`brainkit.data.loaders.open_batches`): ``"resident"``
        copies the cohort's stored images (packed bytes, or float32) to ``device`` once and
        gathers each batch there; ``"memmap"`` reads each batch on the host and copies it.
        ``"auto"``: resident on CUDA when the copy takes under half of the free device
        memory, else memmap; memmap on CPU. Results do not depend on it: both paths give
        bit-identical batches. ``FitResult.data_path`` says which ran.

    Returns
    -------
    FitResult

    Raises
    ------
    TrainingInterrupted
        After SIGTERM / SIGINT, once the checkpoint is written.
    FileExistsError
        If ``out_dir`` holds a checkpoint and ``resume`` is False.
    brainkit.errors.FolderLockedError
        If another process is training into ``out_dir`` (its pid is named).
    brainkit.errors.NonFiniteError
        If the loss or a gradient becomes NaN / inf (epoch and step named; nothing poisoned
        is saved), or, on resume, if the checkpoint holds NaN / inf.
    brainkit.data.CohortError
        If an image holds NaN / inf or the cohort's files changed since it was saved
        (``Cohort.verify``, which reads the whole cohort once before training).
    ValueError
        For invalid arguments, and on resume when the settings or the cohort's content
        differ from the run's.

    Notes
    -----
    Under torchrun (``WORLD_SIZE > 1`` in the environment, or an initialised default process
    group), the model is wrapped in DistributedDataParallel; every process takes a
    contiguous share of each global batch; outputs are all-gathered with gradients so the
    loss sees the global batch; only rank 0 writes files and shows progress. The gradients
    then equal those of one process on the same batch, except for batch-norm statistics,
    which are per process unless ``sync_batchnorm``.

    Examples
    --------
    >>> from brainkit.models import build_model
    >>> model = build_model("contrastive", widths=(8, 16, 32, 64), head_dims=(64, 32))
    >>> result = fit(model, cohort, "exp", out_dir="runs/exp", epochs=5,
    ...              batch_size=16)  # doctest: +SKIP
    >>> result.metrics[["epoch", "loss"]]  # doctest: +SKIP
    """
    # ---------------------------------------------------------------- validation
    if isinstance(config, TrainConfig) and getattr(cohort, "grid_shape", None) is not None:
        config = config.for_grid(cohort.grid_shape, cohort.affine)   # input_box "brain"
    loss, values, train_record = _settings_of(config, settings)
    epochs, batch_size, lr = values["epochs"], values["batch_size"], values["lr"]
    weight_decay, lr_step, lr_gamma = values["weight_decay"], values["lr_step"], \
        values["lr_gamma"]
    lr_schedule, warmup_epochs, n_views = values["lr_schedule"], values["warmup_epochs"], \
        values["n_views"]
    augmentation, loss_kwargs, seed = values["augmentation"], values["loss_kwargs"], \
        values["seed"]
    drop_last, adapn_final_k, adapn_step = values["drop_last"], values["adapn_final_k"], \
        values["adapn_step"]
    if model_config is None and train_record is not None and train_record["model"]:
        model_config = train_record["model"]
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (hasattr(cohort, "images") and hasattr(cohort, "table")):
        raise TypeError(f"cohort must be a brainkit.data.Cohort, got {type(cohort).__name__}")
    if getattr(cohort, "grid_shape", None) is None:
        raise ValueError("cohort has no images (table-only); training needs images")
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    lr_step = check_int("lr_step", lr_step, 1)
    seed = check_int("seed", seed, 0)
    probe_every = check_int("probe_every", probe_every, 0)
    adapn_final_k = check_int("adapn_final_k", adapn_final_k, 1)
    adapn_step = check_int("adapn_step", adapn_step, 0)
    lr = check_float("lr", lr, positive=True, non_number=TypeError)
    weight_decay = check_float("weight_decay", weight_decay, non_number=TypeError)
    lr_gamma = check_float("lr_gamma", lr_gamma, positive=True,
                           non_number=TypeError)
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
    if warmup_epochs >= epochs:
        raise ValueError(f"warmup_epochs ({warmup_epochs}) must be smaller than epochs "
                         f"({epochs})")
    from brainkit.data.loaders import DATA_PATHS

    if data_path not in DATA_PATHS:
        raise ValueError(f"data_path must be one of {DATA_PATHS}, got {data_path!r}")
    train_idx = resolve_indices(indices, len(cohort), "indices")
    loss_fn, loss_record = _resolve_loss(loss, loss_kwargs)
    regression = loss_fn is None
    if regression:
        from brainkit.models import RegressionModel

        if not isinstance(unwrap_model(model), RegressionModel):
            raise TypeError("loss='l1' trains a brainkit.models.RegressionModel, got "
                            f"{type(unwrap_model(model)).__name__}")
    n_views = (1 if regression else 2) if n_views is None else check_int("n_views", n_views, 1)
    augment, augmentation_name = _resolve_augmentation(augmentation)
    if drop_last and len(train_idx) < batch_size:
        raise ValueError(f"drop_last=True with {len(train_idx)} training images and "
                         f"batch_size={batch_size} leaves no batch")
    probe_idx = None
    if probe_every:
        if probe_indices is None:
            raise ValueError("probe_every > 0 needs probe_indices (a held-out set)")
        probe_idx = resolve_indices(probe_indices, len(cohort), "probe_indices")
        if len(probe_idx) < 2:
            raise ValueError(f"probe_indices needs at least 2 images, got {len(probe_idx)}")
        overlap = np.intersect1d(probe_idx, train_idx)
        if overlap.size:
            raise ValueError("probe_indices must be held out, but positions "
                             f"{overlap[:5].tolist()} are also training indices")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"out_dir {out_dir} is a file; expected a run folder")
    if (out_dir / "cohort.json").exists():
        raise InputError(f"out_dir {out_dir} holds a saved cohort (cohort.json); a run needs "
                         "a folder of its own")
    if model_config is None:
        try:
            model_config = describe_model(model)
        except TypeError:
            model_config = None
    if train_record is not None and not train_record["model"]:
        if model_config is None:     # a model brainkit cannot describe: not a TrainConfig
            train_record = None
        else:
            train_record = {**train_record, "model": model_config}

    info, device = setup_distributed(str(resolve_device(device)) if device in (None, "auto")
                                     else device)
    if info.distributed and sync_batchnorm and device.type != "cuda":
        teardown_distributed(info)
        raise ValueError("sync_batchnorm=True needs CUDA (PyTorch's SyncBatchNorm has no CPU "
                         "implementation); use norm='instance' or 'group' on CPU")
    try:
        return _run(model=model, cohort=cohort, out_dir=out_dir, epochs=epochs,
                    batch_size=batch_size, lr=lr, weight_decay=weight_decay, lr_step=lr_step,
                    lr_gamma=lr_gamma, lr_schedule=lr_schedule, warmup_epochs=warmup_epochs,
                    n_views=n_views, device=device, seed=seed,
                    resume=resume, compile=compile, amp=amp, channels_last=channels_last,
                    cudnn_benchmark=cudnn_benchmark, fused=fused, sync_batchnorm=sync_batchnorm,
                    drop_last=drop_last, adapn_final_k=adapn_final_k, adapn_step=adapn_step,
                    probe_every=probe_every, progress=progress,
                    handle_signals=handle_signals, prefetch=prefetch, data_path=data_path,
                    train_idx=train_idx,
                    loss_fn=loss_fn, loss_record=loss_record, augment=augment,
                    augmentation_name=augmentation_name, probe_idx=probe_idx,
                    model_config=model_config, train_record=train_record, info=info)
    finally:
        teardown_distributed(info)


def _run(**kwargs) -> FitResult:
    """The body of :func:`fit`, after validation and process-group setup, holding the run
    directory's lock (:class:`_RunLock`) until it returns or raises."""
    lock = _RunLock(kwargs["out_dir"], kwargs["info"])  # refuses at once: folder in use
    try:
        return _Trainer(lock=lock, **kwargs).run()
    finally:
        lock.release()


@dataclass
class _Progress:
    """Where a run stands: the next epoch and step, the finished epochs' metrics, and the
    running sums of the epoch in progress (``carry``, saved in an interrupted checkpoint)."""

    epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    carry: dict = field(default_factory=lambda: {"loss_sum": 0.0, "volumes": 0,
                                                 "seconds": 0.0})


class _Trainer:
    """One validated training run, in named steps: record the run, check a checkpoint to
    resume, build the model and optimiser, restore, then train epoch by epoch (each a loop of
    :meth:`_step`), saving a checkpoint after every epoch and on a signal."""

    def __init__(self, *, lock, **settings):
        self.lock = lock
        self.__dict__.update(settings)        # fit's validated settings (see fit's call)
        self.regression = self.loss_fn is None
        self.ckpt_path = self.out_dir / CHECKPOINT_NAME
        cuda = self.cuda = self.device.type == "cuda"
        self.amp = cuda if self.amp is None else bool(self.amp)
        self.channels_last = self.device.type in ("cuda", "cpu") if self.channels_last is None \
            else bool(self.channels_last)
        self.cudnn_benchmark = cuda if self.cudnn_benchmark is None else bool(
            self.cudnn_benchmark)
        self.fused = self.device.type in ("cuda", "cpu") if self.fused is None \
            else bool(self.fused)

    # ------------------------------------------------------------------ the run
    def run(self) -> FitResult:
        self._check_batches()
        self.config = self._record()
        checkpoint = self._checkpoint_to_resume()
        # The checks that only read are done; from here on rank 0 writes to out_dir. Every
        # rank learns whether rank 0 holds the lock, then re-reads the cohort.
        self.lock.confirm(self.device)
        verify = getattr(self.cohort, "verify", None)
        if callable(verify):  # NaN / inf, and the content against its recorded hash
            verify()
        if self.info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_run_config(self.out_dir, self.config)
        self._build()
        progress = self._restore(checkpoint)
        self._wrap()
        return self._loop(progress)

    def _check_batches(self) -> None:
        smallest = min(len(b) for b in epoch_batches(
            self.train_idx, batch_size=self.batch_size, seed=self.seed, epoch=0,
            drop_last=self.drop_last))
        if smallest < self.info.world_size:  # a rank with no image cannot take its step
            raise ValueError(f"every batch needs at least one image per process: with "
                             f"{len(self.train_idx)} training images and batch_size="
                             f"{self.batch_size} a batch holds {smallest} image(s) for "
                             f"{self.info.world_size} processes; use drop_last=True or "
                             "another batch_size")

    def _record(self) -> dict:
        """What ``config.json`` holds (and a resume must match)."""
        config = {
            "model": self.model_config,
            "loss": self.loss_record,
            "training": {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                         "weight_decay": self.weight_decay, "lr_step": self.lr_step,
                         "lr_gamma": self.lr_gamma, "lr_schedule": self.lr_schedule,
                         "warmup_epochs": self.warmup_epochs, "n_views": self.n_views,
                         "augmentation": self.augmentation_name, "seed": self.seed,
                         "drop_last": self.drop_last, "adapn_final_k": self.adapn_final_k,
                         "adapn_step": self.adapn_step, "probe_every": self.probe_every,
                         "world_size": self.info.world_size, "amp": self.amp,
                         "channels_last": self.channels_last, "compile": bool(self.compile)},
            "data": {"cohort_hash": self.cohort.content_hash,
                     "n_train": int(len(self.train_idx)),
                     "train_indices_sha256": _indices_digest(self.train_idx),
                     "grid_shape": [int(s) for s in self.cohort.grid_shape],
                     "grid_affine": np.round(np.asarray(self.cohort.affine, dtype=float),
                                             6).tolist()},
        }
        if self.probe_idx is not None:
            config["data"]["probe_indices_sha256"] = _indices_digest(self.probe_idx)
        if self.train_record is not None:
            config["train"] = self.train_record
        return config

    def _checkpoint_to_resume(self) -> dict | None:
        if not self.ckpt_path.exists():
            return None
        if not self.resume:
            raise FileExistsError(f"{self.ckpt_path} exists; pass resume=True (CLI: --resume) "
                                  "to continue that run, or choose another out_dir")
        # On every rank: a rank that skipped it would wait in DDP's set-up for a rank 0 that
        # refused to resume (until the collective timeout).
        _check_resume_config(self.out_dir, read_run_config(self.out_dir), self.config)
        checkpoint = load_checkpoint(self.ckpt_path)
        if checkpoint.get("format") != _CHECKPOINT_FORMAT or "optimizer" not in checkpoint:
            raise InputError(f"{self.ckpt_path} is not a training checkpoint of this brainkit "
                             "(saved with save_model?); cannot resume from it")
        bad = nonfinite_tensors({"model": checkpoint["model"],
                                 "optimizer": checkpoint["optimizer"]})
        if bad:
            raise NonFiniteError(f"{self.ckpt_path}: {len(bad)} tensor(s) hold NaN or inf "
                                 f"(e.g. {bad[:3]}); the run cannot continue from it, start a "
                                 "new run in another folder")
        return checkpoint

    def _build(self) -> None:
        """The model on its device, the optimiser, the schedule, the loss."""
        base = unwrap_model(self.model)
        base.to(self.device)
        if self.channels_last:
            base.to(memory_format=torch.channels_last_3d)
        if self.info.distributed and self.sync_batchnorm:
            base = nn.SyncBatchNorm.convert_sync_batchnorm(base)
        self.base = base
        # Without augmentation every view is a copy of the batch: run the model once and
        # repeat its outputs (batch_loss(shared_views=True)), unless the model is random.
        random_layers = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in base.modules())
        self.passes = 1 if self.augment is None and not random_layers else self.n_views
        self.optimizer = torch.optim.Adam(base.parameters(), lr=self.lr,
                                          weight_decay=self.weight_decay,
                                          **({"fused": True} if self.fused else {}))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(
            self.lr_schedule, epochs=self.epochs, warmup_epochs=self.warmup_epochs,
            lr_step=self.lr_step, lr_gamma=self.lr_gamma))
        if self.loss_fn is not None:
            self.loss_fn.to(self.device)

    def _restore(self, checkpoint: dict | None) -> _Progress:
        if checkpoint is None:
            random.seed(self.seed)
            np.random.seed(self.seed)
            torch.manual_seed(self.seed)
            return _Progress()
        self.base.load_state_dict(checkpoint["model"])
        _load_optimizer_state(self.optimizer, checkpoint["optimizer"])
        # a StepLR state (checkpoints written before LambdaLR) has no lr_lambdas entry
        self.scheduler.load_state_dict({"lr_lambdas": [None] * len(self.optimizer.param_groups),
                                        **checkpoint["scheduler"]})
        set_rng_state(checkpoint["rng"])
        return _Progress(epoch=int(checkpoint["epoch"]), step=int(checkpoint["step"]),
                         history=[dict(row) for row in checkpoint["history"]],
                         carry=dict(checkpoint["carry"]))

    def _wrap(self) -> None:
        module: nn.Module = self.base
        if self.info.distributed:
            module = nn.parallel.DistributedDataParallel(
                self.base, device_ids=[self.device.index] if self.cuda else None)
        if self.compile:
            module = torch.compile(module)
        if self.info.distributed:
            torch.distributed.barrier()
        self.module = module

    def _save(self, epoch: int, step: int, progress: _Progress) -> None:
        if not self.info.is_main:
            return
        state = {
            "format": _CHECKPOINT_FORMAT,
            "model": {k: v.detach().cpu() for k, v in self.base.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch, "step": step,
            "rng": rng_state(),
            "history": progress.history,
            "carry": progress.carry,
            "world_size": self.info.world_size,
            "seed": self.seed,  # with the epoch, it determines the batch order and augmentations
        }
        atomic_save(state, self.ckpt_path)

    # ------------------------------------------------------------------ the epochs
    def _loop(self, progress: _Progress) -> FitResult:
        from tqdm.auto import tqdm

        from brainkit.data.loaders import open_batches

        self.adapn = None if self.regression else _adapn_hook(
            self.loss_fn, batch_size=self.batch_size, n_views=self.n_views, epochs=self.epochs,
            final_k=self.adapn_final_k, step=self.adapn_step)
        # Contrastive losses compute kernels in the labels' dtype: float64 keeps them exact.
        self.ages = torch.tensor(self.cohort.table["age"].to_numpy(
            dtype=np.float32 if self.regression else np.float64))
        steps_per_epoch = len(epoch_batches(self.train_idx, batch_size=self.batch_size,
                                            seed=self.seed, epoch=0, drop_last=self.drop_last))
        previous_benchmark = torch.backends.cudnn.benchmark
        # Batches: gathered on the device (resident) or read on the host, pinned on CUDA so
        # the copy is asynchronous (memmap); either way decoded and un-cropped on the device.
        self.source = open_batches(self.cohort, self.device, self.data_path,
                                   pin_memory=self.cuda)
        self.watch = _FiniteWatch(self.base.parameters(), info=self.info, device=self.device,
                                  steps_per_epoch=steps_per_epoch, lr=self.lr,
                                  out_dir=self.out_dir)
        self.bar = tqdm(total=max(0, (self.epochs - progress.epoch) * steps_per_epoch
                                  - progress.step),
                        disable=not (self.progress and self.info.is_main), unit="step",
                        dynamic_ncols=True)
        self.base.train()
        self.executor = ThreadPoolExecutor(max_workers=1) \
            if self.prefetch and self.source.mode == "memmap" else None
        try:
            if self.cuda:  # set inside the try that restores it (open_batches may raise)
                torch.backends.cudnn.benchmark = self.cudnn_benchmark
            with SignalFlag(self.handle_signals) as guard:
                start_epoch = progress.epoch
                for epoch in range(start_epoch, self.epochs):
                    first = progress.step if epoch == start_epoch else 0
                    row = self._epoch(epoch, first, progress, guard)
                    self.scheduler.step()
                    progress.history.append(row)
                    progress.carry = {"loss_sum": 0.0, "volumes": 0, "seconds": 0.0}
                    self._save(epoch + 1, 0, progress)
                    if self.info.is_main:
                        _write_metrics(self.out_dir, progress.history)
                        self.bar.set_postfix(loss=f"{row['loss']:.4f}",
                                             lr=f"{row['lr']:.2e}",
                                             vol_s=f"{row['volumes_per_s']:.1f}")
        finally:
            self.bar.close()
            if self.executor is not None:
                self.executor.shutdown(wait=True)
            torch.backends.cudnn.benchmark = previous_benchmark
        return self._result(progress)

    def _epoch(self, epoch: int, first: int, progress: _Progress, guard) -> dict:
        """Train one epoch from step ``first``; its metrics row (before the scheduler step)."""
        neighbourhood = self.adapn(epoch) if self.adapn is not None else None
        batches = epoch_batches(self.train_idx, batch_size=self.batch_size, seed=self.seed,
                                epoch=epoch, drop_last=self.drop_last)
        current_lr = self.optimizer.param_groups[0]["lr"]
        if first == 0:
            progress.carry = {"loss_sum": 0.0, "volumes": 0, "seconds": 0.0}
        carry = progress.carry
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        parts = [shard(b, self.info.rank, self.info.world_size) for b in batches]
        load = self.source.fetch
        pending = self.executor.submit(load, parts[first]) \
            if self.executor and first < len(batches) else None
        tick = time.perf_counter()
        last_post = 0.0
        self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}")
        for step in range(first, len(batches)):
            if _any_rank(guard.signum is not None, self.info, self.device):
                self.watch.check()  # never save a poisoned state
                carry["loss_sum"] += loss_sum.item()
                carry["seconds"] += time.perf_counter() - tick
                self._save(epoch, step, progress)
                raise TrainingInterrupted(guard.signum or signal.SIGTERM, epoch, step,
                                          self.ckpt_path)
            x = pending.result() if pending is not None else load(parts[step])
            pending = self.executor.submit(load, parts[step + 1]) \
                if self.executor and step + 1 < len(batches) else None
            value = self._step(x, batches[step], parts[step], epoch, step)
            loss_sum += value.detach().double() * len(batches[step])
            carry["volumes"] += self._passes(len(batches[step])) * len(batches[step])
            self.bar.update(1)
            now = time.perf_counter()
            if self.bar.disable is False and now - last_post > 0.5:
                seconds = carry["seconds"] + now - tick
                self.bar.set_postfix(loss=f"{value.item():.4f}", lr=f"{current_lr:.2e}",
                                     vol_s=f"{carry['volumes'] / max(seconds, 1e-9):.1f}")
                last_post = now
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.watch.check()  # before the probe and the checkpoint of this epoch
        carry["loss_sum"] += loss_sum.item()
        carry["seconds"] += time.perf_counter() - tick
        n_seen = sum(len(b) for b in batches)
        row = {"epoch": epoch + 1, "loss": carry["loss_sum"] / n_seen, "lr": current_lr,
               "seconds": carry["seconds"],
               "volumes_per_s": carry["volumes"] / max(carry["seconds"], 1e-9)}
        if neighbourhood is not None:
            row["neighbourhood_size"] = neighbourhood
        if self.probe_idx is not None:
            row.update({"probe_age_mae": math.nan, "probe_site_bacc": math.nan})
            if self.info.is_main and ((epoch + 1) % self.probe_every == 0
                                      or epoch + 1 == self.epochs):
                row.update(_probe(self.base, self.cohort, self.probe_idx, seed=self.seed,
                                  batch_size=self.batch_size, device=self.device, amp=self.amp,
                                  channels_last=self.channels_last))
        return row

    def _passes(self, n_images: int) -> int:
        """Forward passes of a batch of ``n_images``: one when the views share it, except
        for one image alone (``batch_size=1``), which keeps its copies (batch norm needs two
        values per channel, and a 1 x 1 x 1 last feature map of one image has one)."""
        return self.passes if n_images > 1 else self.n_views

    def _step(self, x, batch, local, epoch: int, step: int) -> torch.Tensor:
        """One optimiser step on one global batch (this process's share ``local``)."""
        x = self.source.to_device(x)
        passes = self._passes(len(local))
        x = augment_views(x, local, self.augment, n_views=passes, seed=self.seed,
                          epoch=epoch)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        y = self.ages[torch.as_tensor(batch)].repeat(self.n_views)
        # pinned + non_blocking: a pageable copy would wait for the GPU's queue
        y = y.pin_memory().to(self.device, non_blocking=True) if self.cuda \
            else y.to(self.device)
        sizes = shard_sizes(len(batch), self.info.world_size) if self.info.distributed \
            else None
        value = batch_loss(self.module, self.loss_fn, x, y, n_views=self.n_views, sizes=sizes,
                           amp=self.amp, shared_views=passes < self.n_views)
        self.optimizer.zero_grad(set_to_none=True)
        value.backward()
        self.watch.record(value, epoch, step)  # CPU: raises before the update
        self.optimizer.step()
        if (step + 1) % _FINITE_CHECK_EVERY == 0:
            self.watch.check()
        return value

    def _result(self, progress: _Progress) -> FitResult:
        if self.info.is_main and not progress.history:
            _write_metrics(self.out_dir, progress.history)
        metrics = pd.DataFrame(progress.history)
        if len(metrics):
            metrics["epoch"] = metrics["epoch"].astype("int64")
        return FitResult(model=self.base, metrics=metrics, out_dir=self.out_dir,
                         epochs_completed=len(progress.history), config=self.config,
                         data_path=self.source.mode)
