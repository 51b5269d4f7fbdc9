"""``make_loss``: build a contrastive loss by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from brainkit.losses.adapn import AdapNLoss
from brainkit.losses.kernelized import ExpLoss, ThresholdLoss, YAwareLoss
from brainkit.losses.rnc import RnCLoss

__all__ = ["LOSS_CLASSES", "make_loss"]

LOSS_CLASSES: dict[str, type[nn.Module]] = {
    "yaware": YAwareLoss,
    "threshold": ThresholdLoss,
    "exp": ExpLoss,
    "rnc": RnCLoss,
    "adapn": AdapNLoss,
}
"""The contrastive losses by name (what :func:`make_loss` builds; ``brainkit.experiments.LOSSES``
adds the L1 regression baseline)."""


def make_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a contrastive loss by name.

    Parameters
    ----------
    name : {"yaware", "threshold", "exp", "rnc", "adapn"}
        The loss (see :data:`LOSS_CLASSES`). The L1 baseline is not a contrastive loss and is not
        built here.
    **kwargs
        Passed to the class (e.g. ``kernel``, ``sigma``, ``temperature``, ``formulation``).

    Returns
    -------
    torch.nn.Module
        Called as ``loss_fn(z, y)`` with ``z`` (N, D) and ``y`` (N,).

    Raises
    ------
    ValueError
        On an unknown name (or an invalid argument value).
    TypeError
        On an argument the loss does not take.

    Examples
    --------
    >>> make_loss("exp", kernel="rbf", sigma=2.0, temperature=0.1)
    ExpLoss(kernel=rbf, sigma=2.0, temperature=0.1, formulation='reference', base_temperature=0.07)
    """
    if not isinstance(name, str) or name not in LOSS_CLASSES:
        raise ValueError(f"name must be one of {sorted(LOSS_CLASSES)}, got {name!r}")
    cls = LOSS_CLASSES[name]
    try:
        return cls(**kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise TypeError(f"make_loss({name!r}): {cls.__name__} {err}") from err
        raise
