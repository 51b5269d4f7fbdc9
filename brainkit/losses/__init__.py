"""The contrastive loss family of the paper (spec: ``shared/spec/losses.md``).

- :mod:`~brainkit.losses.kernels`: kernels on label differences (rbf, gaussian, cauchy);
- :class:`YAwareLoss`, :class:`ThresholdLoss`, :class:`ExpLoss`: the kernelised losses, each
  in the released code's formulation (``"reference"``, default) or the printed one
  (``"paper"``);
- :class:`RnCLoss`: Rank-N-Contrast; :class:`AdapNLoss` with :func:`adapn_neighbourhood`;
- :func:`make_loss`: build one by name.

Every loss is called as ``loss_fn(z, y)`` with ``z`` of shape (N, D), all views of all
samples stacked in any order, and ``y`` of shape (N,); it returns a scalar.
"""

from brainkit.losses.adapn import NEIGHBOUR_METRICS, AdapNLoss, adapn_neighbourhood
from brainkit.losses.factory import LOSS_CLASSES, make_loss
from brainkit.losses.kernelized import FORMULATIONS, ExpLoss, ThresholdLoss, YAwareLoss
from brainkit.losses.kernels import KERNELS, Kernel, cauchy, gaussian, get_kernel, rbf
from brainkit.losses.rnc import RnCLoss

__all__ = [
    "FORMULATIONS",
    "KERNELS",
    "LOSS_CLASSES",
    "NEIGHBOUR_METRICS",
    "AdapNLoss",
    "ExpLoss",
    "Kernel",
    "RnCLoss",
    "ThresholdLoss",
    "YAwareLoss",
    "adapn_neighbourhood",
    "cauchy",
    "gaussian",
    "get_kernel",
    "make_loss",
    "rbf",
]
