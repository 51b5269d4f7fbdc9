"""3D ResNet encoders and the heads on top of them.

- :func:`resnet3d` (and :func:`resnet10` / :func:`resnet18` / :func:`resnet34`): encoders from
  one table of depths (:data:`RESNET_LAYERS`) and a tuple of widths; ResNet-18 with the
  default widths is the paper's 33.2M-parameter encoder.
- :class:`ContrastiveModel`: encoder + projection head, L2-normalised output.
- :class:`RegressionModel`: encoder + linear head, output in years.
- :func:`build_model`: both from one set of keyword arguments.
"""

from .heads import EMBED_LAYERS, MODEL_KINDS, ContrastiveModel, RegressionModel, build_model
from .resnet import (
    NORMS,
    OUTPUT_STRIDE,
    RESNET_LAYERS,
    BasicBlock,
    ResNet3d,
    BlockConv3d,
    StemConv3d,
    brain_input_box,
    norm_layer,
    resnet3d,
    resnet10,
    resnet18,
    resnet34,
)

__all__ = [
    "EMBED_LAYERS",
    "MODEL_KINDS",
    "NORMS",
    "OUTPUT_STRIDE",
    "RESNET_LAYERS",
    "BasicBlock",
    "ContrastiveModel",
    "RegressionModel",
    "ResNet3d",
    "BlockConv3d",
    "StemConv3d",
    "brain_input_box",
    "build_model",
    "norm_layer",
    "resnet3d",
    "resnet10",
    "resnet18",
    "resnet34",
]
