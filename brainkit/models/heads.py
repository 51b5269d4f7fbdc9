"""Models on top of an encoder: contrastive projection head, linear age regressor.

- :class:`ContrastiveModel`: encoder + MLP projection head ``F -> 512 -> 128`` (ReLU between),
  L2-normalised output, as the released ``SupConResNet`` (its hidden width equals ``F = 512``
  for ResNet-18; here it is ``head_dims[0]``, 512 by default, whatever the encoder width).
- :class:`RegressionModel`: encoder + ``Linear(F, 1)``, the L1 baseline (released
  ``SupRegResNet``). The output is ``head(f) * target_scale + target_mean`` with both stored as
  buffers, so predictions are in years; the head starts at zero, so an untrained model
  predicts exactly ``target_mean`` (training starts at the mean age).

Embeddings for the probes come from :meth:`embed` with a named layer (:data:`EMBED_LAYERS`):

- ``"projection"``: the L2-normalised projection (the released code probes this one);
- ``"encoder"``: the pooled encoder features, shape ``(B, F)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import resnet3d

__all__ = ["EMBED_LAYERS", "MODEL_KINDS", "ContrastiveModel", "RegressionModel", "build_model"]

#: Layers :meth:`ContrastiveModel.embed` can return (``RegressionModel`` has only "encoder").
EMBED_LAYERS = ("projection", "encoder")

#: Accepted values of ``build_model(kind=...)``.
MODEL_KINDS = ("contrastive", "regression")


def _encoder_features(encoder) -> int:
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    features = getattr(encoder, "out_features", None)
    if isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise ValueError("encoder must have a positive integer attribute out_features "
                         f"(the size of its output vector), got {features!r}")
    return features


def _at_least_float32(z: torch.Tensor) -> torch.Tensor:
    """Upcast half / bfloat16 (autocast outputs) to float32; keep float32 and float64."""
    return z.to(torch.promote_types(z.dtype, torch.float32))


class ContrastiveModel(nn.Module):
    """Encoder + projection head with L2-normalised output.

    Parameters
    ----------
    encoder : torch.nn.Module
        Maps ``(B, C, X, Y, Z)`` to ``(B, F)`` and has ``out_features == F`` (e.g.
        :func:`brainkit.models.resnet3d`).
    head_dims : sequence of int, default (512, 128)
        Widths of the head's linear layers, ReLU between them: the default is
        ``Linear(F, 512) - ReLU - Linear(512, 128)``. The last entry is the embedding size;
        a single entry gives a linear head.

    Attributes
    ----------
    encoder : torch.nn.Module
    head : torch.nn.Sequential
    out_features : int
        ``head_dims[-1]``.

    Notes
    -----
    The head keeps PyTorch's default ``nn.Linear`` initialisation, as the released code. Under
    autocast the normalised output is float32 (half precision is upcast before the norm).

    Examples
    --------
    >>> import torch
    >>> from brainkit.models import resnet3d
    >>> m = ContrastiveModel(resnet3d(18, widths=(8, 16, 32, 64)), head_dims=(32, 16))
    >>> z = m(torch.randn(2, 1, 31, 37, 31))
    >>> z.shape, torch.allclose(z.norm(dim=1), torch.ones(2))
    (torch.Size([2, 16]), True)
    """

    def __init__(self, encoder: nn.Module, head_dims: Sequence[int] = (512, 128)) -> None:
        super().__init__()
        features = _encoder_features(encoder)
        head_dims = tuple(head_dims)
        if len(head_dims) == 0:
            raise ValueError("head_dims must hold at least one width (the embedding size)")
        for i, d in enumerate(head_dims):
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise ValueError(f"head_dims[{i}] must be a positive integer, got {d!r}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip((features,) + head_dims[:-1], head_dims)):
            if i > 0:
                layers.append(nn.ReLU(inplace=True))
            layers.append(nn.Linear(d_in, d_out))
        self.encoder = encoder
        self.head = nn.Sequential(*layers)
        self.head_dims = head_dims
        self.out_features = head_dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised projections.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, X, Y, Z)

        Returns
        -------
        torch.Tensor of shape (B, head_dims[-1])
            Unit-norm rows (float32 under half-precision autocast).
        """
        z = self.head(self.encoder(x))
        return F.normalize(_at_least_float32(z), dim=1)

    def features_and_output(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embed(x, "encoder"), forward(x))`` from one pass through the encoder."""
        features = self.encoder(x)
        return features, F.normalize(_at_least_float32(self.head(features)), dim=1)

    def embed(self, x: torch.Tensor, layer: str = "projection") -> torch.Tensor:
        """Embeddings for probes, from a named layer.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, X, Y, Z)
        layer : {"projection", "encoder"}, default "projection"
            ``"projection"``: the L2-normalised head output, shape ``(B, head_dims[-1])``
            (what the released code probes). ``"encoder"``: the pooled encoder features, shape
            ``(B, F)``.

        Returns
        -------
        torch.Tensor
            Gradients are tracked as usual; wrap in :func:`torch.no_grad` for probing.
        """
        if layer == "projection":
            return self(x)
        if layer == "encoder":
            return self.encoder(x)
        raise ValueError(f"layer must be one of {EMBED_LAYERS}, got {layer!r}")


class RegressionModel(nn.Module):
    """Encoder + linear head predicting age in years (the L1 baseline).

    Parameters
    ----------
    encoder : torch.nn.Module
        Maps ``(B, C, X, Y, Z)`` to ``(B, F)`` and has ``out_features == F``.
    target_mean : float, default 0.0
        Added to the head output (e.g. the training set's mean age).
    target_scale : float, default 1.0
        Multiplies the head output (e.g. the training set's age standard deviation); > 0.

    Attributes
    ----------
    encoder : torch.nn.Module
    head : torch.nn.Linear
        ``Linear(F, 1)`` with weight and bias initialised to zero, so an untrained model
        predicts exactly ``target_mean`` for every input. (The released code uses PyTorch's
        default initialisation and no offset, so its predictions start near 0 years.) The
        weight gets a gradient from the first step (``f * dL/dout``); the encoder from the
        second.
    target_mean, target_scale : torch.Tensor
        Float32 scalar buffers (saved in the state dict, moved with ``.to``).

    Examples
    --------
    >>> import torch
    >>> from brainkit.models import resnet3d
    >>> r = RegressionModel(resnet3d(18, widths=(8, 16, 32, 64)), target_mean=50.0,
    ...                     target_scale=15.0)
    >>> r(torch.randn(3, 1, 31, 37, 31)).shape
    torch.Size([3])
    """

    def __init__(self, encoder: nn.Module, target_mean: float = 0.0,
                 target_scale: float = 1.0) -> None:
        super().__init__()
        features = _encoder_features(encoder)
        target_mean = float(target_mean)
        target_scale = float(target_scale)
        if not math.isfinite(target_mean):
            raise ValueError(f"target_mean must be finite, got {target_mean!r}")
        if not (math.isfinite(target_scale) and target_scale > 0):
            raise ValueError(f"target_scale must be finite and > 0, got {target_scale!r}")
        self.encoder = encoder
        self.head = nn.Linear(features, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("target_mean", torch.tensor(target_mean, dtype=torch.float32))
        self.register_buffer("target_scale", torch.tensor(target_scale, dtype=torch.float32))
        self.out_features = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted ages.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, X, Y, Z)

        Returns
        -------
        torch.Tensor of shape (B,)
            ``head(encoder(x)) * target_scale + target_mean`` (float32 under half-precision
            autocast).
        """
        out = self.head(self.encoder(x)).squeeze(-1)
        return _at_least_float32(out) * self.target_scale + self.target_mean

    def features_and_output(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embed(x), forward(x))`` from one pass through the encoder."""
        features = self.encoder(x)
        out = _at_least_float32(self.head(features).squeeze(-1))
        return features, out * self.target_scale + self.target_mean

    def embed(self, x: torch.Tensor, layer: str = "encoder") -> torch.Tensor:
        """Embeddings for probes: the pooled encoder features.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, X, Y, Z)
        layer : {"encoder"}, default "encoder"
            The regression model has no projection head.

        Returns
        -------
        torch.Tensor of shape (B, F)
        """
        if layer == "encoder":
            return self.encoder(x)
        raise ValueError(f"layer must be 'encoder' for a RegressionModel (it has no projection "
                         f"head), got {layer!r}")


def build_model(kind: str, *, depth: int = 18, widths: Sequence[int] = (64, 128, 256, 512),
                in_channels: int = 1, norm: str = "batch",
                head_dims: Sequence[int] = (512, 128), target_mean: float = 0.0,
                target_scale: float = 1.0, zero_init_residual: bool = False,
                input_box=None) -> nn.Module:
    """Build a contrastive or regression model on a fresh 3D ResNet encoder.

    Parameters
    ----------
    kind : {"contrastive", "regression"}
    depth, widths, in_channels, norm, zero_init_residual, input_box
        Encoder settings, see :func:`brainkit.models.resnet3d`.
    head_dims : sequence of int, default (512, 128)
        Projection head widths (``kind="contrastive"`` only).
    target_mean, target_scale : float
        Output offset and scale in years (``kind="regression"`` only).

    Returns
    -------
    ContrastiveModel or RegressionModel

    Examples
    --------
    >>> m = build_model("regression", widths=(8, 16, 32, 64), target_mean=60.0)
    >>> float(m.target_mean)
    60.0
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    encoder = resnet3d(depth=depth, widths=widths, in_channels=in_channels, norm=norm,
                       zero_init_residual=zero_init_residual, input_box=input_box)
    if kind == "contrastive":
        return ContrastiveModel(encoder, head_dims=head_dims)
    return RegressionModel(encoder, target_mean=target_mean, target_scale=target_scale)
