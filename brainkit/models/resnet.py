"""3D ResNet encoders (10, 18, 34) built from one table of depths and widths.

The architecture is the one the paper and its released code use ("3D ResNet-18, 33.2M
parameters"; EIDOSLAB/contrastive-brain-age-prediction ``src/models/resnet3d.py``):

- stem: ``Conv3d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)``, norm, ReLU,
  ``MaxPool3d(3, stride=2, padding=1)`` (the convolution is a :class:`StemConv3d`: the same
  parameters and function, computed over the input's voxel phases on the CPU, twice as fast);
- four stages of :class:`BasicBlock` (two 3x3x3 convolutions without bias, each followed by a
  norm layer), the first stage at stride 1 and the next three at stride 2; a block whose stride
  or width changes gets a ``Conv3d(1x1x1, bias=False)`` + norm shortcut (these convolutions
  are :class:`BlockConv3d`: the same parameters and function, with a faster weight gradient
  on the CPU);
- global average pooling to a ``(B, widths[-1])`` feature vector.

``input_box`` (not in the paper) crops the input to a fixed voxel box first, e.g. the brain's
box on its grid (:func:`brainkit.data.grid.brain_box`, widened by ``stride=OUTPUT_STRIDE`` so
that the last feature map keeps the whole image's shape): on the 6 mm grid that box is 68 % of
the image, and a training step on the cropped input takes about a fifth less time. The box is part
of the model (saved with it), so every caller, training, embedding and prediction alike, crops
alike.

With ``in_channels=1``, ``widths=(64, 128, 256, 512)`` and any of the three norms, ResNet-18
has exactly 33,160,000 parameters (the paper's 33.2M).

Initialisation follows the released code (itself torchvision's): Kaiming-normal convolutions
(``mode="fan_out"``, ReLU gain), norm weights 1 and biases 0. ``zero_init_residual=True``
additionally zeroes the weight of the last norm layer of each block, so every residual branch
starts as the identity (Goyal et al., 2017); it is off by default, as in the released code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "RESNET_LAYERS",
    "NORMS",
    "OUTPUT_STRIDE",
    "BasicBlock",
    "BlockConv3d",
    "brain_input_box",
    "ResNet3d",
    "StemConv3d",
    "norm_layer",
    "resnet3d",
    "resnet10",
    "resnet18",
    "resnet34",
]

#: Blocks per stage for each supported depth (the one table every factory reads).
RESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
}

#: Accepted values of the ``norm`` argument.
NORMS = ("batch", "instance", "group")

#: Total downsampling of the encoder (stem convolution, max pool, three stride-2 stages): an
#: axis of n voxels ends as ceil(n / 32) positions of the last feature map. A brain box for the
#: model's input keeps them (:func:`brainkit.data.grid.brain_box` with ``stride``).
OUTPUT_STRIDE = 2 ** 5

#: Upper bound on the number of groups of a ``"group"`` norm layer (Wu & He, 2018).
_MAX_GROUPS = 32


def norm_layer(norm: str, channels: int) -> nn.Module:
    """Build one 3D normalisation layer.

    Parameters
    ----------
    norm : {"batch", "instance", "group"}
        ``"batch"``: :class:`torch.nn.BatchNorm3d`. ``"instance"``:
        :class:`torch.nn.InstanceNorm3d` with learnable affine parameters and no running
        statistics. ``"group"``: :class:`torch.nn.GroupNorm` with ``gcd(32, channels)`` groups
        (32 groups for the paper's widths; one channel per group for widths below 32 that
        divide 32).
    channels : int
        Number of channels normalised.

    Returns
    -------
    torch.nn.Module
        A layer mapping ``(B, channels, X, Y, Z)`` to the same shape, with ``2 * channels``
        learnable parameters whatever the kind.
    """
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True, track_running_stats=False)
    if norm == "group":
        return nn.GroupNorm(math.gcd(_MAX_GROUPS, channels), channels)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with a residual shortcut (He et al., 2016).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    stride : int, default 1
        Stride of the first convolution (and of the shortcut).
    norm : {"batch", "instance", "group"}, default "batch"
        Kind of every norm layer in the block, shortcut included.

    Notes
    -----
    ``forward`` maps ``(B, in_channels, X, Y, Z)`` to
    ``(B, out_channels, ceil(X / stride), ceil(Y / stride), ceil(Z / stride))``. When the stride
    or the width changes, the shortcut is ``Conv3d(1x1x1, stride, bias=False)`` + norm;
    otherwise it is the identity and ``downsample`` is ``None``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = BlockConv3d(in_channels, out_channels, kernel_size=3, stride=stride,
                                 padding=1, bias=False)
        self.bn1 = norm_layer(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = BlockConv3d(out_channels, out_channels, kernel_size=3, padding=1,
                                 bias=False)
        self.bn2 = norm_layer(norm, out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                BlockConv3d(in_channels, out_channels, kernel_size=1, stride=stride,
                            bias=False),
                norm_layer(norm, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = out + identity
        return self.relu(out)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def brain_input_box(shape, affine):
    """The ``input_box`` that ``"brain"`` stands for on a grid: the MNI152 brain mask's box
    (:func:`brainkit.data.grid.brain_box`) widened to keep the whole image's last feature map
    (``stride=OUTPUT_STRIDE``); ``None`` (the whole image) on a grid the mask does not fall
    on, such as images not in MNI space.

    >>> from brainkit.data.grid import mni_grid
    >>> brain_input_box(*mni_grid(6))
    ((2, 29), (2, 35), (0, 27))
    """
    from ..data.grid import NotInMNISpace, brain_box

    try:
        return brain_box(shape, affine, stride=OUTPUT_STRIDE)
    except NotInMNISpace:
        return None


def check_input_box(box) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """``None``, or 3 ``(start, stop)`` voxel ranges with ``0 <= start < stop``, as tuples."""
    if box is None:
        return None
    message = ("input_box must be None or 3 (start, stop) voxel ranges with 0 <= start < stop, "
               f"got {box!r}")
    if isinstance(box, str):
        raise ValueError(message + ("; 'brain' is resolved on a grid first "
                                    "(TrainConfig.for_grid or brainkit.data.grid.brain_box)"
                                    if box == "brain" else ""))
    try:
        pairs = tuple(tuple(pair) for pair in box)
    except TypeError:
        raise ValueError(message) from None
    ok = len(pairs) == 3 and all(
        len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
        and 0 <= p[0] < p[1] for p in pairs)
    if not ok:
        raise ValueError(message)
    return pairs


def _phases(t: torch.Tensor) -> torch.Tensor:
    """(N, C, 2X, 2Y, 2Z) -> (N, 8C, X, Y, Z): each channel's eight 2 x 2 x 2 voxel phases."""
    n, c = t.shape[:2]
    x, y, z = (m // 2 for m in t.shape[2:])
    return t.reshape(n, c, x, 2, y, 2, z, 2).permute(0, 1, 3, 5, 7, 2, 4, 6) \
        .reshape(n, c * 8, x, y, z)


def _plain_cpu_conv(conv: nn.Conv3d, input: torch.Tensor) -> bool:
    """A 5-D CPU input through a convolution without dilation or groups, zero-padded by a
    tuple (not ``"same"``): the case the CPU forms of :class:`StemConv3d` and
    :class:`BlockConv3d` are written for."""
    return (input.device.type == "cpu" and input.dim() == 5 and conv.groups == 1
            and conv.dilation == (1, 1, 1) and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple))


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:                       # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


#: Output voxels per image up to which a weight gradient is one matrix product over the
#: input's patches rather than a convolution (:class:`BlockConv3d`).
SMALL_MAP = 16


def _weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """d(loss)/d(weight) of ``conv3d(x, weight, stride=stride, padding=padding)`` given the
    output's gradient: ``sum over n, p of grad[n, o, p] * x_padded[n, c, stride * p + k]``.

    On a map of more than :data:`SMALL_MAP` voxels, a convolution of ``x`` with ``grad`` as
    its kernel, batch and channels swapped (``dilation=stride``); on a smaller map, one matrix
    product of ``grad`` with the input's patches.
    """
    n, c = x.shape[:2]
    out = grad.shape[1]
    if math.prod(grad.shape[2:]) <= SMALL_MAP:
        xp = nn.functional.pad(x.permute(0, 2, 3, 4, 1),
                               (0, 0) + tuple(v for p in reversed(padding) for v in (p, p)))
        st = xp.stride()
        patches = xp.as_strided(
            (n, *grad.shape[2:], *kernel, c),
            (st[0], *(st[1 + i] * stride[i] for i in range(3)), st[1], st[2], st[3], st[4]))
        w = (grad.permute(0, 2, 3, 4, 1).reshape(-1, out).T
             @ patches.reshape(-1, math.prod(kernel) * c))
        return w.view(out, *kernel, c).permute(0, 4, 1, 2, 3)
    w = nn.functional.conv3d(x.transpose(0, 1), grad.transpose(0, 1), None, 1, padding, stride)
    return w[:, :, :kernel[0], :kernel[1], :kernel[2]].transpose(0, 1)


class _ConvWeightGrad(torch.autograd.Function):
    """``conv3d`` without bias whose backward computes the weight gradient by
    :func:`_weight_grad` and the input gradient by ATen's ``convolution_backward``."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding)
        return nn.functional.conv3d(x, weight, None, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding = ctx.conv
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(stride), list(padding), [1, 1, 1], False,
                [0, 0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            layout = (torch.channels_last_3d
                      if weight.is_contiguous(memory_format=torch.channels_last_3d)
                      else torch.contiguous_format)
            grad_w = _weight_grad(x, grad, weight.shape[2:], stride, padding) \
                .contiguous(memory_format=layout)
        return grad_x, grad_w, None, None


class BlockConv3d(nn.Conv3d):
    """A residual block's convolution; on the CPU its weight gradient is computed as a
    convolution (a matrix product on small maps) rather than by oneDNN's backward.

    The same parameters and the same function as :class:`torch.nn.Conv3d` (same
    ``state_dict``, outputs and gradients equal to float rounding). oneDNN's weight gradient
    is slow for the narrow, small maps of a CPU-sized network: for the ``ci`` model's first
    stage (8 channels, 7 x 9 x 7 voxels, batch 16, one thread) it takes 1.8 ms where the
    same sum written as a convolution of the input with the output's gradient takes 0.8,
    and a 1 x 2 x 1 map of the last stage 1.1 ms where a matrix product takes 0.2; a ``ci``
    training step takes 53 instead of 60 ms. Used when training on the CPU (gradients
    enabled, no autocast) with zero padding, no bias, dilation or groups; otherwise (CUDA,
    inference, a frozen weight) it is :class:`torch.nn.Conv3d`.
    """

    def _conv_forward(self, input, weight, bias):
        if (bias is None and _plain_cpu_conv(self, input) and torch.is_grad_enabled()
                and weight.requires_grad and not _autocast_on()):
            return _ConvWeightGrad.apply(input, weight, self.stride, self.padding)
        return super()._conv_forward(input, weight, bias)


class StemConv3d(nn.Conv3d):
    """The stem's stride-2 convolution; on the CPU computed as a stride-1 convolution over the
    input's eight 2 x 2 x 2 phases.

    The same parameters and the same function as :class:`torch.nn.Conv3d` (same
    ``state_dict``, outputs equal to float rounding): the zero-padded input is split into its
    eight voxel phases (even / odd index along each axis) as channels, and the kernel, padded
    to an even size, into the matching eight sub-kernels of half its size, so that ``conv(x, w,
    stride=2) == conv(phases(x), phases(w), stride=1)``. With one input channel and a 7^3
    kernel, oneDNN runs the eight-channel form about twice as fast on the CPU: forward and
    backward of the ``ci`` stem (batch 16, 27 x 33 x 27 voxels, 8 channels, one thread) take
    19 instead of 35 ms, about a fifth of a training step. Its output is channels-last
    (oneDNN's layout, which the next layers then keep). Other devices (cuDNN) and other
    settings (stride, dilation, groups, padding mode) use :class:`torch.nn.Conv3d` as is.
    """

    def _conv_forward(self, input, weight, bias):
        if self.stride != (2, 2, 2) or not _plain_cpu_conv(self, input):
            return super()._conv_forward(input, weight, bias)
        out = [(n + 2 * p - k) // 2 + 1 for n, p, k in
               zip(input.shape[2:], self.padding, self.kernel_size)]
        # zero-pad the input (its right side to an even length) and the kernel (to an even
        # size), then the voxel phases of both become channels
        pad = [v for n, p in reversed(list(zip(input.shape[2:], self.padding)))
               for v in (p, p + (n + 2 * p) % 2)]
        x = _phases(nn.functional.pad(input, pad))
        w = _phases(nn.functional.pad(weight, [v for k in reversed(self.kernel_size)
                                               for v in (0, k % 2)]))
        cl = torch.channels_last_3d      # oneDNN's layout: 19 ms where contiguous takes 27
        y = nn.functional.conv3d(x.contiguous(memory_format=cl), w.contiguous(memory_format=cl),
                                 bias)
        return y[:, :, :out[0], :out[1], :out[2]]


class ResNet3d(nn.Module):
    """3D ResNet encoder: stem, four stages of basic blocks, global average pooling.

    Parameters
    ----------
    layers : sequence of 4 int
        Number of blocks in each stage (a row of :data:`RESNET_LAYERS`).
    widths : sequence of 4 int, default (64, 128, 256, 512)
        Channels of each stage; the stem has ``widths[0]`` channels. Narrower widths such as
        ``(8, 16, 32, 64)`` make a CPU-sized model with the same topology.
    in_channels : int, default 1
        Channels of the input volume.
    norm : {"batch", "instance", "group"}, default "batch"
        Kind of every norm layer (stem, blocks and shortcuts); see :func:`norm_layer`.
    zero_init_residual : bool, default False
        Zero the weight of each block's last norm layer so residual branches start as the
        identity.
    input_box : 3 (start, stop) pairs, optional
        Crop every input to ``x[:, :, x0:x1, y0:y1, z0:z1]`` before the stem (e.g.
        :func:`brainkit.data.grid.brain_box`); inputs must reach each ``stop``.

    Attributes
    ----------
    out_features : int
        Size of the pooled feature vector, ``widths[-1]``.
    input_box : tuple or None

    Examples
    --------
    >>> import torch
    >>> enc = ResNet3d((2, 2, 2, 2), widths=(8, 16, 32, 64))
    >>> enc(torch.zeros(2, 1, 31, 37, 31)).shape
    torch.Size([2, 64])
    """

    def __init__(self, layers: Sequence[int], widths: Sequence[int] = (64, 128, 256, 512),
                 in_channels: int = 1, norm: str = "batch",
                 zero_init_residual: bool = False, input_box=None) -> None:
        super().__init__()
        layers = tuple(layers)
        widths = tuple(widths)
        if len(layers) != 4:
            raise ValueError(f"layers must give the blocks of 4 stages, got {layers!r}")
        for i, n in enumerate(layers):
            _check_positive_int(f"layers[{i}]", n)
        if len(widths) != 4:
            raise ValueError(f"widths must give the channels of 4 stages, got {widths!r}")
        for i, w in enumerate(widths):
            _check_positive_int(f"widths[{i}]", w)
        _check_positive_int("in_channels", in_channels)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")

        self.layers = layers
        self.widths = widths
        self.in_channels = in_channels
        self.norm = norm
        self.input_box = check_input_box(input_box)
        self.out_features = widths[-1]

        self.conv1 = StemConv3d(in_channels, widths[0], kernel_size=7, stride=2, padding=3,
                                bias=False)
        self.bn1 = norm_layer(norm, widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_stage(widths[0], widths[0], layers[0], 1, norm)
        self.layer2 = self._make_stage(widths[0], widths[1], layers[1], 2, norm)
        self.layer3 = self._make_stage(widths[1], widths[2], layers[2], 2, norm)
        self.layer4 = self._make_stage(widths[2], widths[3], layers[3], 2, norm)
        self.avgpool = nn.AdaptiveAvgPool3d(1)

        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm3d, nn.InstanceNorm3d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        stops = tuple(stop for _, stop in self.input_box)
        if x.dim() != 5 or any(n < stop for n, stop in zip(x.shape[2:], stops)):
            raise ValueError(f"the model crops its input to the voxel box {self.input_box}: it "
                             f"needs (B, C, X, Y, Z) volumes reaching at least {stops}, got "
                             f"shape {tuple(x.shape)}")
        (x0, x1), (y0, y1), (z0, z1) = self.input_box
        return x[:, :, x0:x1, y0:y1, z0:z1]

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, blocks: int, stride: int,
                    norm: str) -> nn.Sequential:
        stage = [BasicBlock(in_channels, out_channels, stride=stride, norm=norm)]
        stage += [BasicBlock(out_channels, out_channels, norm=norm) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode volumes.

        Parameters
        ----------
        x : torch.Tensor of shape (B, in_channels, X, Y, Z)
            Any floating dtype and memory format (``torch.channels_last_3d`` included).

        Returns
        -------
        torch.Tensor of shape (B, out_features)
            Globally average-pooled features of the last stage.
        """
        if self.input_box is not None:
            x = self._crop(x)
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        return torch.flatten(x, 1)


def resnet3d(depth: int = 18, widths: Sequence[int] = (64, 128, 256, 512), in_channels: int = 1,
             norm: str = "batch", zero_init_residual: bool = False,
             input_box=None) -> ResNet3d:
    """Build a 3D ResNet encoder of a depth listed in :data:`RESNET_LAYERS`.

    Parameters
    ----------
    depth : {10, 18, 34}, default 18
        18 is the paper's encoder (33,160,000 parameters with the default widths and one input
        channel).
    widths, in_channels, norm, zero_init_residual, input_box
        See :class:`ResNet3d`.

    Returns
    -------
    ResNet3d
        Maps ``(B, in_channels, X, Y, Z)`` to ``(B, widths[-1])``.

    Examples
    --------
    >>> enc = resnet3d(18)
    >>> sum(p.numel() for p in enc.parameters())
    33160000
    """
    if depth not in RESNET_LAYERS:
        raise ValueError(f"depth must be one of {sorted(RESNET_LAYERS)}, got {depth!r}")
    return ResNet3d(RESNET_LAYERS[depth], widths=widths, in_channels=in_channels, norm=norm,
                    zero_init_residual=zero_init_residual, input_box=input_box)


def resnet10(**kwargs) -> ResNet3d:
    """3D ResNet-10 encoder; keyword arguments as :func:`resnet3d`."""
    return resnet3d(10, **kwargs)


def resnet18(**kwargs) -> ResNet3d:
    """3D ResNet-18 encoder (the paper's); keyword arguments as :func:`resnet3d`."""
    return resnet3d(18, **kwargs)


def resnet34(**kwargs) -> ResNet3d:
    """3D ResNet-34 encoder; keyword arguments as :func:`resnet3d`."""
    return resnet3d(34, **kwargs)
