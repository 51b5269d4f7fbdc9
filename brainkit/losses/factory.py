"""``make_loss``: build a contrastive loss by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from brainkit.losses.adapn import AdapNLoss
from brainkit.losses.kernelized import ExpLoss, ThresholdLoss, YAwareLoss
from brainkit.losses.rnc import RnCLoss

__all__ = ["LOSSES", "make_loss"]

LOSSES: dict[str, type[nn.Module]] = {
    "yaware": YAwareLoss,
    "threshold": ThresholdLoss,
    "exp": ExpLoss,
    "rnc": RnCLoss,
    "adapn": AdapNLoss,
}
"""Loss names and their classes."""


def make_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a contrastive loss by name.

    Parameters
    ----------
    name : {"yaware", "threshold", "exp", "rnc", "adapn"}
        The loss (see :data:`LOSSES`). The L1 baseline is not a contrastive loss and is not
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
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"name must be one of {sorted(LOSSES)}, got {name!r}")
    cls = LOSSES[name]
    try:
        return cls(**kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise TypeError(f"make_loss({name!r}): {cls.__name__} {err}") from err
        raise
