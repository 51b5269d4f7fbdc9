"""Downstream transfer: fine-tune a pretrained encoder for a binary task (paper Table 4).

A pretrained encoder (an ``nn.Module`` mapping ``(B, 1, X, Y, Z)`` to ``(B, F)`` with an
``out_features`` attribute, e.g. :func:`brainkit.models.resnet3d`) gets a linear head and is
trained with binary cross-entropy, end to end (fine-tuning) or with the encoder frozen
(linear probing). :func:`transfer_matrix` runs it within and across datasets with
stratified (subject-level when ids are given) cross-validation and reports balanced
accuracy per fold.

The encoder passed in is never modified: it is deep-copied for every fit.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from torch import nn

from brainkit.eval._validation import as_labels, check_positive_int

__all__ = ["FinetunedClassifier", "finetune_classifier", "TransferResult", "transfer_matrix"]


class _Images:
    """Read-only view of a stack of volumes, gathered one batch at a time.

    Accepts (n, X, Y, Z) or (n, C, X, Y, Z) numpy arrays (memory-mapped or not, any real
    dtype such as uint8 / float16 stores) or tensors; nothing is copied or converted until a
    batch is requested, so a large image store is never loaded whole.
    """

    def __init__(self, images, name: str = "images"):
        self.name = name
        if isinstance(images, torch.Tensor):
            data = images.detach()
            ok = data.dtype.is_floating_point or data.dtype in (torch.uint8, torch.int16, torch.int32)
        else:
            data = images if isinstance(images, np.ndarray) else np.asarray(images)
            ok = data.dtype.kind in "fiub"
        if not ok:
            raise TypeError(f"{name} must be a numeric array of shape (n, X, Y, Z) or "
                            f"(n, C, X, Y, Z); got dtype {data.dtype}")
        if data.ndim not in (4, 5):
            raise ValueError(f"{name} must have shape (n, X, Y, Z) or (n, C, X, Y, Z); "
                             f"got {tuple(data.shape)}")
        if data.shape[0] == 0:
            raise ValueError(f"{name} is empty")
        self.data = data
        self.add_channel = data.ndim == 4
        self.n = int(data.shape[0])
        self.sample_shape = ((1,) if self.add_channel else ()) + tuple(data.shape[1:])

    def batch(self, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        """Images ``idx`` as a float32 tensor (B, C, X, Y, Z) on ``device``."""
        if isinstance(self.data, torch.Tensor):
            b = self.data[torch.as_tensor(idx, device=self.data.device)]
        else:
            b = torch.from_numpy(np.ascontiguousarray(self.data[idx]))
        b = b.to(device=device, dtype=torch.float32, non_blocking=True)
        if self.add_channel:
            b = b.unsqueeze(1)
        if not torch.isfinite(b).all():
            raise ValueError(f"{self.name} contains non-finite values (in images {idx[:8].tolist()})")
        return b


def _check_encoder(encoder) -> int:
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module; got {type(encoder).__name__}")
    f = getattr(encoder, "out_features", None)
    if isinstance(f, bool) or not isinstance(f, int) or f < 1:
        raise ValueError("encoder must have an integer attribute out_features (the size F of its "
                         f"(B, F) output); got {f!r}")
    return f


class _EncoderWithHead(nn.Module):
    def __init__(self, encoder: nn.Module, in_features: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).squeeze(-1)


def _rng_devices(device: torch.device) -> list:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


class FinetunedClassifier:
    """A pretrained encoder plus a linear head, trained for a binary task.

    Parameters
    ----------
    encoder : nn.Module
        Maps ``(B, C, X, Y, Z)`` to ``(B, F)``; must have ``out_features == F``. It is
        deep-copied in ``fit``; the original is left untouched.
    epochs : int, default 10
        Passes over the training images.
    lr : float, default 1e-4
        Adam learning rate.
    batch_size : int, default 8
    device : str or torch.device, optional
        Where to train and predict (e.g. ``"cuda:0"``); default CUDA when available, else
        the CPU. Inputs stay on the CPU and are moved one batch at a time.
    seed : int, default 0
        Seeds the head's initialisation, the batch order and any randomness inside the
        encoder (dropout); the global RNG state is restored afterwards.
    freeze_encoder : bool, default False
        True trains only the head (linear probing); the encoder stays in eval mode.
    weight_decay : float, default 0.0
        Adam weight decay.
    class_weight : {"balanced", None}, default "balanced"
        "balanced" weights the positive class by ``n_negative / n_positive`` in the loss.

    Attributes
    ----------
    model_ : nn.Module
        The fine-tuned network (``model_.encoder``, ``model_.head``), in eval mode.
    classes_ : ndarray of shape (2,)
        The two labels; ``classes_[1]`` is the positive class.
    history_ : list of float
        Mean training loss per epoch.

    Examples
    --------
    >>> class Tiny(nn.Module):
    ...     out_features = 4
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = nn.Sequential(nn.Conv3d(1, 4, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten())
    ...     def forward(self, x):
    ...         return self.net(x)
    >>> x = np.random.default_rng(0).normal(size=(20, 6, 6, 6)).astype("float32")
    >>> y = np.r_[np.zeros(10), np.ones(10)]
    >>> x[y == 1] += 1.0
    >>> clf = FinetunedClassifier(Tiny(), epochs=5, lr=1e-2).fit(x, y)
    >>> clf.predict_proba(x).shape
    (20, 2)
    """

    def __init__(self, encoder: nn.Module, *, epochs: int = 10, lr: float = 1e-4,
                 batch_size: int = 8, device=None, seed: int = 0,
                 freeze_encoder: bool = False, weight_decay: float = 0.0,
                 class_weight: str | None = "balanced"):
        self.encoder = encoder
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.freeze_encoder = freeze_encoder
        self.weight_decay = weight_decay
        self.class_weight = class_weight

    def _check_params(self) -> torch.device:
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.seed, "seed", minimum=0)
        if not (isinstance(self.lr, (int, float)) and np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number; got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a non-negative number; got {self.weight_decay!r}")
        if self.class_weight not in ("balanced", None):
            raise ValueError(f"class_weight must be 'balanced' or None; got {self.class_weight!r}")
        try:
            if self.device is None or self.device == "auto":
                return torch.device("cuda" if torch.cuda.is_available() else "cpu")
            return torch.device(self.device)
        except (TypeError, RuntimeError) as exc:
            raise ValueError(f"device must name a torch device (e.g. 'cpu', 'cuda:0'); "
                             f"got {self.device!r}") from exc

    def fit(self, images, y) -> FinetunedClassifier:
        """Fine-tune on ``images`` with binary labels ``y``.

        Parameters
        ----------
        images : array-like or Tensor of shape (n, X, Y, Z) or (n, C, X, Y, Z)
        y : array-like of shape (n,)
            Exactly two distinct labels (e.g. 0/1 or "HC"/"AD"); the larger in sorted
            order is the positive class.

        Returns
        -------
        self
        """
        x = _Images(images)
        y = as_labels(y, "y")
        if len(y) != x.n:
            raise ValueError(f"images and y must have the same number of samples; got "
                             f"{x.n} and {len(y)}")
        return self._fit_subset(x, y, np.arange(x.n))

    def _fit_subset(self, x: _Images, y: np.ndarray, rows: np.ndarray) -> FinetunedClassifier:
        """Fit on images ``rows`` of ``x`` with labels ``y[rows]``."""
        device = self._check_params()
        in_features = _check_encoder(self.encoder)
        y = y[rows]
        classes = np.unique(y)
        if classes.size != 2:
            raise ValueError(f"y must contain exactly two classes; got {classes.tolist()[:10]}")
        target = torch.as_tensor((y == classes[1]).astype(np.float32))
        n = len(rows)
        n_pos = float(target.sum())
        pos_weight = None
        if self.class_weight == "balanced":
            pos_weight = torch.tensor((n - n_pos) / n_pos, device=device)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

        with torch.random.fork_rng(devices=_rng_devices(device)):
            torch.manual_seed(self.seed)
            model = _EncoderWithHead(copy.deepcopy(self.encoder), in_features).to(device)
            if self.freeze_encoder:
                model.encoder.requires_grad_(False)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
            gen = torch.Generator().manual_seed(self.seed)
            history = []
            for _ in range(self.epochs):
                model.train()
                if self.freeze_encoder:
                    model.encoder.eval()
                perm = torch.randperm(n, generator=gen).numpy()
                total, seen = 0.0, 0
                for start in range(0, n, self.batch_size):
                    pos = perm[start:start + self.batch_size]
                    if pos.size == 1 and self.batch_size > 1:
                        continue  # a lone last sample breaks batch norm; it is drawn again next epoch
                    xb = x.batch(rows[pos], device)
                    yb = target[torch.as_tensor(pos)].to(device)
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model(xb), yb)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * pos.size
                    seen += pos.size
                history.append(total / max(seen, 1))
        model.eval()
        self.model_ = model
        self.classes_ = classes
        self.history_ = history
        self.device_ = device
        self.in_channels_ = x.sample_shape[0]
        return self

    def decision_function(self, images, *, batch_size: int | None = None) -> np.ndarray:
        """Logits of the positive class.

        Parameters
        ----------
        images : array-like or Tensor of shape (n, X, Y, Z) or (n, C, X, Y, Z)
        batch_size : int, optional
            Defaults to the training batch size.

        Returns
        -------
        ndarray of shape (n,)
            Feed these to :class:`brainkit.eval.TemperatureScaler` for calibration.
        """
        x = _Images(images)
        return self._logits_subset(x, np.arange(x.n), batch_size)

    def _logits_subset(self, x: _Images, rows: np.ndarray, batch_size: int | None) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise RuntimeError("this FinetunedClassifier is not fitted yet; call fit(images, y)")
        if x.sample_shape[0] != self.in_channels_:
            raise ValueError(f"{x.name} has {x.sample_shape[0]} channel(s); the model was "
                             f"trained on {self.in_channels_}")
        bs = check_positive_int(batch_size or self.batch_size, "batch_size")
        out = []
        self.model_.eval()
        with torch.no_grad():
            for start in range(0, len(rows), bs):
                xb = x.batch(rows[start:start + bs], self.device_)
                out.append(self.model_(xb).float().cpu())
        return torch.cat(out).numpy().astype(np.float64)

    def predict_proba(self, images, *, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities, columns ordered as ``classes_``.

        Returns
        -------
        ndarray of shape (n, 2)
        """
        p = expit(self.decision_function(images, batch_size=batch_size))
        return np.column_stack([1.0 - p, p])

    def predict(self, images, *, batch_size: int | None = None) -> np.ndarray:
        """Predicted labels (probability of ``classes_[1]`` >= 0.5).

        Returns
        -------
        ndarray of shape (n,)
        """
        logits = self.decision_function(images, batch_size=batch_size)
        return self.classes_[(logits >= 0).astype(int)]


def finetune_classifier(encoder: nn.Module, images_train, y_train, *, epochs: int, lr: float,
                        batch_size: int, device, seed: int, freeze_encoder: bool = False,
                        weight_decay: float = 0.0,
                        class_weight: str | None = "balanced") -> FinetunedClassifier:
    """Fine-tune a copy of ``encoder`` with a linear head on a binary task.

    Shorthand for ``FinetunedClassifier(encoder, ...).fit(images_train, y_train)``; see
    :class:`FinetunedClassifier` for the parameters.

    Returns
    -------
    FinetunedClassifier
        Fitted; use ``predict_proba(images)``.
    """
    return FinetunedClassifier(
        encoder, epochs=epochs, lr=lr, batch_size=batch_size, device=device, seed=seed,
        freeze_encoder=freeze_encoder, weight_decay=weight_decay, class_weight=class_weight,
    ).fit(images_train, y_train)


@dataclass(frozen=True)
class TransferResult:
    """Result of :func:`transfer_matrix`.

    Attributes
    ----------
    table : DataFrame
        One row per (source, target, fold): ``source, target, fold, balanced_accuracy, auc,
        n_train, n_test``. ``source == target`` rows are within-dataset (held-out fold);
        the others test the fold's model on the whole target dataset.
    summary : DataFrame
        ``source, target, n_folds, mean, sd`` of the balanced accuracy (sd over folds,
        ddof=1).
    predictions : DataFrame
        ``source, target, fold, index, y_true, prob``: every test prediction (``index`` is
        the position in the target dataset, ``y_true`` is 1 for the positive class), for
        calibration analyses.
    """

    table: pd.DataFrame
    summary: pd.DataFrame
    predictions: pd.DataFrame


def _unpack_dataset(name: str, item):
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise TypeError(f"datasets[{name!r}] must be a tuple (images, y) or (images, y, groups); "
                        f"got {type(item).__name__}")
    images = _Images(item[0], f"datasets[{name!r}] images")
    y = as_labels(item[1], f"datasets[{name!r}] y")
    if len(y) != images.n:
        raise ValueError(f"datasets[{name!r}]: images and y differ in length "
                         f"({images.n} vs {len(y)})")
    groups = None
    if len(item) == 3 and item[2] is not None:
        groups = as_labels(item[2], f"datasets[{name!r}] groups")
        if len(groups) != len(y):
            raise ValueError(f"datasets[{name!r}]: groups must have one entry per image")
    return images, y, groups


def transfer_matrix(encoder: nn.Module, datasets: Mapping[str, tuple], *, epochs: int,
                    lr: float, batch_size: int, device, seed: int = 0, folds: int = 5,
                    freeze_encoder: bool = False, weight_decay: float = 0.0,
                    class_weight: str | None = "balanced") -> TransferResult:
    """Fine-tune within and across datasets with cross-validation (paper Table 4).

    For each source dataset and each of ``folds`` stratified folds, a copy of
    ``encoder`` is fine-tuned on the training part; the model is tested on the held-out
    fold (within-dataset) and on every image of each other dataset (cross-dataset).

    Parameters
    ----------
    encoder : nn.Module
        Pretrained encoder with ``out_features`` (left untouched).
    datasets : mapping of str to tuple
        ``name -> (images, y)`` or ``(images, y, groups)``; ``images`` (n, X, Y, Z) or
        (n, C, X, Y, Z), ``y`` (n,) with the same two labels in every dataset, ``groups``
        (n,) subject ids to keep a subject's images in one fold (``StratifiedGroupKFold``).
    epochs, lr, batch_size, device, freeze_encoder, weight_decay, class_weight
        As in :class:`FinetunedClassifier`.
    seed : int, default 0
        Seeds the fold shuffling; fold ``k`` fine-tunes with seed ``seed + k``.
    folds : int, default 5
        Folds per source dataset.

    Returns
    -------
    TransferResult
    """
    if not isinstance(datasets, Mapping) or not datasets:
        raise TypeError("datasets must be a non-empty mapping name -> (images, y[, groups])")
    folds = check_positive_int(folds, "folds", minimum=2)
    data = {str(k): _unpack_dataset(str(k), v) for k, v in datasets.items()}
    label_sets = {k: tuple(np.unique(v[1]).tolist()) for k, v in data.items()}
    if len(set(label_sets.values())) != 1 or len(next(iter(label_sets.values()))) != 2:
        raise ValueError(f"every dataset must have the same two labels; got {label_sets}")
    shapes = {k: v[0].sample_shape for k, v in data.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"every dataset must have the same image shape (C, X, Y, Z); got {shapes}")

    rows, preds = [], []
    for source, (images, y, groups) in data.items():
        if groups is None:
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
            splits = splitter.split(np.zeros(len(y)), y)
        else:
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
            splits = splitter.split(np.zeros(len(y)), y, groups)
        for fold, (tr, te) in enumerate(splits):
            clf = FinetunedClassifier(
                encoder, epochs=epochs, lr=lr, batch_size=batch_size, device=device,
                seed=seed + fold, freeze_encoder=freeze_encoder, weight_decay=weight_decay,
                class_weight=class_weight)._fit_subset(images, y, tr)
            for target, (t_images, t_y, _) in data.items():
                idx = te if target == source else np.arange(len(t_y))
                prob = expit(clf._logits_subset(t_images, idx, None))
                truth = (t_y[idx] == clf.classes_[1]).astype(int)
                pred = (prob >= 0.5).astype(int)
                auc = (float(roc_auc_score(truth, prob)) if 0 < truth.sum() < truth.size
                       else float("nan"))
                rows.append({"source": source, "target": target, "fold": fold,
                             "balanced_accuracy": float(balanced_accuracy_score(truth, pred)),
                             "auc": auc, "n_train": int(len(tr)), "n_test": int(len(idx))})
                preds.append(pd.DataFrame({"source": source, "target": target, "fold": fold,
                                           "index": idx, "y_true": truth, "prob": prob}))
    table = pd.DataFrame(rows)
    summary = (table.groupby(["source", "target"], sort=False)["balanced_accuracy"]
               .agg(n_folds="size", mean="mean", sd="std").reset_index())
    return TransferResult(table=table, summary=summary,
                          predictions=pd.concat(preds, ignore_index=True))
