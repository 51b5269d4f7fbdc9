"""Batched, replayable augmentations for contrastive views of 3D volumes.

Every transform works on a whole batch ``x`` of shape ``(B, C, X, Y, Z)`` on its own device
(the GPU when training on a GPU), with index arithmetic, masks and grouped convolutions: no
Python loop over samples or voxels. Each one follows TorchIO's split between drawing and
applying:

- ``params = t.sample(x.shape, generator=g, device=x.device)`` draws per-sample parameters, a
  ``dict`` of tensors whose first dimension is the batch;
- ``y = t.apply(x, params)`` is the deterministic twin: the same ``params`` give the same ``y``;
- ``y = t(x, generator=g)`` is ``t.apply(x, t.sample(x.shape, generator=g, device=x.device))``,
  so a generator seeded the same way replays a batch of augmentations exactly.

:class:`Compose` chains transforms (its ``sample`` returns the list of their parameter dicts)
and :func:`augmentation` builds the released settings by name.

The released settings
---------------------
The authors' code (EIDOSLAB/contrastive-brain-age-prediction, ``src/main_mse.py``
``get_transforms`` with ``src/data/transforms.py``) works on OpenBHB VBM volumes of
121 x 145 x 121 voxels (1.5 mm) and offers ``--tf none | crop | cutout | all``:

- ``none``: the identity (both contrastive views are then the same image);
- ``crop``: ``Crop((1, 121, 128, 121), "random")`` then ``Pad((1, 128, 128, 128))``: a
  window of 128 of the 145 slices of the second (anterior-posterior) axis at a random offset,
  the other axes whole, then zero padding centred (the extra voxel of an odd margin after);
- ``cutout``: ``Cutout(patch_size=(1, 32, 32, 32), probability=0.5)``: with probability 0.5,
  zero a 32-voxel cube at a uniformly random position inside the volume;
- ``all``: that cutout, then that crop and pad.

Here sizes are fractions of each axis, so the same setting works on any grid
(:data:`RELEASED_CROP_FRACTION` = (1, 128/145, 1), :data:`RELEASED_CUTOUT_FRACTION` =
(32/121, 32/145, 32/121); on the 1.5 mm grid they give exactly the released 128 and 32
voxels). One deliberate difference: the released ``Pad`` grows the volume to 128^3, whereas
:class:`RandomCropPad` pads back to the input grid, so every setting keeps ``x.shape``; the
random part (which window of the anterior-posterior axis is kept, and the zero margins around
it) is the same. The released code draws the crop offset as
``int(random.random() * 128) % (delta + 1)``, close to uniform; here it is exactly uniform.
Flips, noise, blur and intensity scaling are not in the released settings; they are provided
for ablations.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "AUGMENTATIONS",
    "RELEASED_CROP_FRACTION",
    "RELEASED_CUTOUT_FRACTION",
    "RELEASED_CUTOUT_PROBABILITY",
    "RandomTransform",
    "Compose",
    "RandomCropPad",
    "Cutout",
    "RandomFlip",
    "GaussianNoise",
    "GaussianBlur",
    "IntensityScale",
    "augmentation",
]

#: Names accepted by :func:`augmentation` (the released ``--tf`` choices).
AUGMENTATIONS = ("none", "crop", "cutout", "all")

#: Released crop window as fractions of each axis: 121/121, 128/145, 121/121.
RELEASED_CROP_FRACTION = (1.0, 128 / 145, 1.0)

#: Released cutout cube (32 voxels) as fractions of each axis of the 121 x 145 x 121 grid.
RELEASED_CUTOUT_FRACTION = (32 / 121, 32 / 145, 32 / 121)

#: Released probability of applying the cutout to a sample.
RELEASED_CUTOUT_PROBABILITY = 0.5

Params = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# helpers


def _check_shape(shape) -> tuple[int, int, int, int, int]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as err:
        raise TypeError(f"shape must be a sequence of 5 ints (B, C, X, Y, Z), got {shape!r}") from err
    if len(shape) != 5 or min(shape) < 1:
        raise ValueError(f"shape must be 5 positive sizes (B, C, X, Y, Z), got {shape!r}")
    return shape


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, C, X, Y, Z), got {type(x).__name__}")
    if x.ndim != 5:
        raise ValueError(f"x must have shape (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")


def _check_params(params, keys: dict[str, tuple[int, ...]], batch: int, name: str) -> None:
    """Check keys and shapes (not values: that would force a device sync)."""
    if not isinstance(params, dict):
        raise TypeError(f"{name}.apply: params must be the dict returned by {name}.sample, "
                        f"got {type(params).__name__}")
    for key, trailing in keys.items():
        if key not in params:
            raise ValueError(f"{name}.apply: params lacks {key!r} (expected keys {sorted(keys)})")
        value = params[key]
        expected = (batch,) + trailing
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name}.apply: params[{key!r}] must have shape {expected} for a "
                             f"batch of {batch}, got {got}")


def _draw_device(generator: torch.Generator | None, device) -> torch.device:
    """Where random numbers are drawn: the generator's device, else ``device``."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got "
                            f"{type(generator).__name__}")
        return generator.device
    return torch.device("cpu") if device is None else torch.device(device)


def _uniform(size: tuple[int, ...], generator, device, dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) drawn with ``generator`` (on its device), returned on ``device``."""
    out = torch.rand(size, generator=generator, device=_draw_device(generator, device), dtype=dtype)
    return out.to(torch.device("cpu") if device is None else device)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _keep_format(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Give ``out`` the channels-last-3d layout of ``x`` when ``x`` has it."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return out.contiguous(memory_format=torch.channels_last_3d)
    return out


def _gather_axes(x: torch.Tensor, index: Sequence[torch.Tensor]) -> torch.Tensor:
    """``out[b, c, i, j, k] = x[b, c, index[0][b, i], index[1][b, j], index[2][b, k]]``.

    One advanced-indexing gather; index tensors have shapes ``(B, X)``, ``(B, Y)``, ``(B, Z)``.
    """
    b, c = x.shape[:2]
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1, 1)
    return x[bi, ci, index[0].view(b, 1, -1, 1, 1), index[1].view(b, 1, 1, -1, 1),
             index[2].view(b, 1, 1, 1, -1)]


def _axis_view(t: torch.Tensor, axis: int) -> torch.Tensor:
    """Reshape ``(B, n)`` to broadcast along spatial ``axis`` of ``(B, C, X, Y, Z)``."""
    shape = [t.shape[0], 1, 1, 1, 1]
    shape[2 + axis] = t.shape[1]
    return t.view(shape)


def _fractions(value, name: str) -> tuple[float, float, float]:
    """A fraction or three fractions in (0, 1]."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,) * 3
    try:
        value = tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a fraction or 3 fractions of the axes, got {value!r}") from err
    if len(value) != 3 or not all(0.0 < v <= 1.0 for v in value):
        raise ValueError(f"{name} must be a fraction or 3 fractions in (0, 1], got {value!r}")
    return value


def _range(value, name: str, low: float, high: float = math.inf) -> tuple[float, float]:
    """A ``(lo, hi)`` pair with ``low <= lo <= hi <= high`` (a single number means ``(v, v)``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number or a (low, high) pair, got {value!r}") from err
    if not (low <= lo <= hi <= high):
        raise ValueError(f"{name} must satisfy {low} <= low <= high <= {high}, got {(lo, hi)!r}")
    return lo, hi


def _probability(p, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _box_size(fraction: tuple[float, float, float], grid: tuple[int, int, int],
              batch: int, device) -> torch.Tensor:
    """Voxels per axis, ``round(fraction * n)`` clipped to ``[1, n]``, repeated over the batch."""
    size = [min(n, max(1, math.floor(f * n + 0.5))) for f, n in zip(fraction, grid)]
    return torch.tensor(size, dtype=torch.int64, device=device).expand(batch, 3).clone()


def _box_offset(size: torch.Tensor, grid: tuple[int, int, int], generator, device) -> torch.Tensor:
    """Offsets uniform in ``[0, n - size]`` per sample and axis, shape ``(B, 3)``."""
    u = _uniform(tuple(size.shape), generator, device, dtype=torch.float64)
    span = torch.tensor(grid, dtype=torch.int64, device=size.device) - size + 1
    return torch.minimum((u * span).long(), span - 1)


# --------------------------------------------------------------------------------------------
# transforms


class RandomTransform(abc.ABC):
    """Base class: ``sample`` draws parameters, ``apply`` uses them, ``__call__`` does both."""

    @abc.abstractmethod
    def sample(self, shape: Sequence[int], generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Params:
        """Draw per-sample parameters for a batch of shape ``(B, C, X, Y, Z)``.

        Parameters
        ----------
        shape : sequence of 5 int
            The batch's shape (only sizes are used, never values).
        generator : torch.Generator, optional
            Source of randomness; None uses the global RNG of ``device``. Numbers are drawn on
            the generator's device and moved to ``device``, so a CPU generator can drive a GPU
            batch too (but a given seed replays only with a generator of the same device).
        device : torch.device or str, optional
            Where the returned tensors live (``x.device``); default CPU.

        Returns
        -------
        dict of str to torch.Tensor
            Each tensor's first dimension is ``B``.
        """

    @abc.abstractmethod
    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Apply the transform with given parameters (deterministic).

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, X, Y, Z)
            Floating-point batch on any device.
        params : dict of str to torch.Tensor
            As returned by :meth:`sample` for ``x.shape``, on ``x.device``.

        Returns
        -------
        torch.Tensor
            Same shape, dtype and device as ``x``; ``x`` is not modified.
        """

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``apply(x, sample(x.shape, generator, x.device))``."""
        _check_input(x)
        return self.apply(x, self.sample(x.shape, generator=generator, device=x.device))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(RandomTransform):
    """Apply transforms in order.

    Parameters
    ----------
    transforms : sequence of RandomTransform
        Applied first to last; an empty sequence is the identity.

    Notes
    -----
    :meth:`sample` returns the list of the transforms' parameter dicts, in order; every
    transform draws from the same generator, one after the other.

    Examples
    --------
    >>> import torch
    >>> aug = Compose([Cutout(0.25, p=1.0), RandomFlip(axes=(0,))])
    >>> x = torch.rand(2, 1, 8, 8, 8)
    >>> g = torch.Generator().manual_seed(0)
    >>> params = aug.sample(x.shape, generator=g)
    >>> len(params), sorted(params[0])
    (2, ['apply', 'offset', 'size'])
    >>> torch.equal(aug(x, torch.Generator().manual_seed(0)), aug.apply(x, params))
    True
    """

    def __init__(self, transforms: Sequence[RandomTransform]) -> None:
        transforms = list(transforms)
        for i, t in enumerate(transforms):
            if not (callable(getattr(t, "sample", None)) and callable(getattr(t, "apply", None))):
                raise TypeError(f"transforms[{i}] must have sample() and apply() methods, got "
                                f"{type(t).__name__}")
        self.transforms = transforms

    def sample(self, shape, generator=None, device=None) -> list[Params]:
        shape = _check_shape(shape)
        return [t.sample(shape, generator=generator, device=device) for t in self.transforms]

    def apply(self, x: torch.Tensor, params: Sequence[Params]) -> torch.Tensor:
        _check_input(x)
        if not isinstance(params, (list, tuple)) or len(params) != len(self.transforms):
            got = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
            raise ValueError(f"Compose.apply: params must be a list of {len(self.transforms)} "
                             f"dicts (one per transform), got {got}")
        for t, p in zip(self.transforms, params):
            x = t.apply(x, p)
        return x


class RandomCropPad(RandomTransform):
    """Crop a random box and zero-pad it back to the input size, centred (released Crop + Pad).

    Parameters
    ----------
    size : float or sequence of 3 float, default :data:`RELEASED_CROP_FRACTION`
        Box size as fractions in (0, 1] of each spatial axis; ``round(fraction * n)`` voxels
        (at least 1).

    Notes
    -----
    Parameters: ``offset`` and ``size``, int64 of shape ``(B, 3)``. Along each axis of length
    ``n``, the box ``x[o : o + s]`` (``o`` uniform in ``[0, n - s]``) lands at
    ``out[c : c + s]`` with ``c = (n - s) // 2`` (the released ``Pad`` puts the extra voxel of
    an odd margin after); everything else is 0. ``apply`` accepts a different size per sample.
    """

    def __init__(self, size=RELEASED_CROP_FRACTION) -> None:
        self.size = _fractions(size, "size")

    def sample(self, shape, generator=None, device=None) -> Params:
        b, _, *grid = _check_shape(shape)
        device = torch.device("cpu") if device is None else torch.device(device)
        size = _box_size(self.size, tuple(grid), b, device)
        return {"offset": _box_offset(size, tuple(grid), generator, device), "size": size}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        _check_input(x)
        _check_params(params, {"offset": (3,), "size": (3,)}, x.shape[0], "RandomCropPad")
        offset = params["offset"].to(x.device, torch.int64)
        size = params["size"].to(x.device, torch.int64)
        index, inside = [], None
        for axis, n in enumerate(x.shape[2:]):
            i = torch.arange(n, device=x.device)
            s, o = size[:, axis, None], offset[:, axis, None]
            start = (n - s) // 2
            index.append((i - start + o).clamp(0, n - 1))
            keep = _axis_view((i >= start) & (i < start + s), axis)
            inside = keep if inside is None else inside & keep
        out = _gather_axes(x, index).masked_fill(~inside, 0)
        return _keep_format(out, x)


class Cutout(RandomTransform):
    """Set a random box to a constant, with a probability per sample (released Cutout).

    Parameters
    ----------
    size : float or sequence of 3 float, default :data:`RELEASED_CUTOUT_FRACTION`
        Box size as fractions in (0, 1] of each spatial axis; ``round(fraction * n)`` voxels
        (at least 1). The box lies wholly inside the volume.
    p : float, default :data:`RELEASED_CUTOUT_PROBABILITY` (0.5)
        Probability that a sample is cut.
    value : float, default 0.0
        Fill value.

    Notes
    -----
    Parameters: ``offset`` and ``size`` (int64, ``(B, 3)``; offsets uniform in
    ``[0, n - size]``) and ``apply`` (bool, ``(B,)``). All channels are cut alike.
    """

    def __init__(self, size=RELEASED_CUTOUT_FRACTION, p: float = RELEASED_CUTOUT_PROBABILITY,
                 value: float = 0.0) -> None:
        self.size = _fractions(size, "size")
        self.p = _probability(p)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"value must be a finite number, got {value!r}")
        self.value = float(value)

    def sample(self, shape, generator=None, device=None) -> Params:
        b, _, *grid = _check_shape(shape)
        device = torch.device("cpu") if device is None else torch.device(device)
        size = _box_size(self.size, tuple(grid), b, device)
        offset = _box_offset(size, tuple(grid), generator, device)
        apply = _uniform((b,), generator, device) < self.p
        return {"offset": offset, "size": size, "apply": apply}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        _check_input(x)
        _check_params(params, {"offset": (3,), "size": (3,), "apply": ()}, x.shape[0], "Cutout")
        offset = params["offset"].to(x.device, torch.int64)
        size = params["size"].to(x.device, torch.int64)
        box = params["apply"].to(x.device, torch.bool).view(-1, 1, 1, 1, 1)
        for axis, n in enumerate(x.shape[2:]):
            i = torch.arange(n, device=x.device)
            o, s = offset[:, axis, None], size[:, axis, None]
            box = box & _axis_view((i >= o) & (i < o + s), axis)
        return x.masked_fill(box, self.value)


class RandomFlip(RandomTransform):
    """Flip each listed spatial axis of each sample independently with probability ``p``.

    Parameters
    ----------
    axes : sequence of int, default (0,)
        Spatial axes (0, 1, 2 for X, Y, Z) that may flip. The default, as TorchIO's, flips
        only the first axis (left-right on the MNI grid), which keeps brains anatomically
        plausible.
    p : float, default 0.5
        Probability of flipping, per sample and axis.

    Notes
    -----
    Parameters: ``flip`` (bool, ``(B, 3)``), always False for axes not listed.
    """

    def __init__(self, axes: Sequence[int] = (0,), p: float = 0.5) -> None:
        axes = tuple(axes)
        if not axes or any(isinstance(a, bool) or a not in (0, 1, 2) for a in axes):
            raise ValueError(f"axes must be a non-empty subset of (0, 1, 2), got {axes!r}")
        self.axes = tuple(sorted(set(axes)))
        self.p = _probability(p)

    def sample(self, shape, generator=None, device=None) -> Params:
        b = _check_shape(shape)[0]
        device = torch.device("cpu") if device is None else torch.device(device)
        allowed = torch.tensor([a in self.axes for a in range(3)], device=device)
        return {"flip": (_uniform((b, 3), generator, device) < self.p) & allowed}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        _check_input(x)
        _check_params(params, {"flip": (3,)}, x.shape[0], "RandomFlip")
        flip = params["flip"].to(x.device, torch.bool)
        index = []
        for axis, n in enumerate(x.shape[2:]):
            i = torch.arange(n, device=x.device)
            index.append(torch.where(flip[:, axis, None], n - 1 - i, i))
        return _keep_format(_gather_axes(x, index), x)


class GaussianNoise(RandomTransform):
    """Add zero-mean Gaussian noise with a per-sample standard deviation.

    Parameters
    ----------
    std : float or (float, float), default (0.0, 0.1)
        Standard deviations are drawn uniformly from this range, in the image's intensity
        units (OpenBHB VBM intensities are grey-matter densities in [0, 1]).
    p : float, default 1.0
        Probability that a sample gets noise (else its std is 0).

    Notes
    -----
    Parameters: ``std`` (float32, ``(B,)``) and ``seed`` (int64, ``(B,)``). ``apply`` draws the
    noise of sample ``b`` from a fresh generator on ``x.device`` seeded with ``seed[b]``, so a
    sample's noise depends only on its own parameters (a sub-batch of the parameters replays
    the matching sub-batch) and the same parameters give the same noise on the same device
    type. This is the one loop over the batch in this module: one ``randn`` call per sample,
    each vectorised over the sample's voxels; reading the seeds costs one host-device
    synchronisation per call on a GPU.
    """

    def __init__(self, std=(0.0, 0.1), p: float = 1.0) -> None:
        self.std = _range(std, "std", 0.0)
        self.p = _probability(p)

    def sample(self, shape, generator=None, device=None) -> Params:
        b = _check_shape(shape)[0]
        device = torch.device("cpu") if device is None else torch.device(device)
        lo, hi = self.std
        std = lo + (hi - lo) * _uniform((b,), generator, device)
        std = torch.where(_uniform((b,), generator, device) < self.p, std, torch.zeros_like(std))
        seed = torch.randint(0, 2 ** 62, (b,), generator=generator,
                             device=_draw_device(generator, device)).to(device)
        return {"std": std, "seed": seed}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        _check_input(x)
        _check_params(params, {"std": (), "seed": ()}, x.shape[0], "GaussianNoise")
        dtype = _compute_dtype(x)
        noise = torch.empty(x.shape, device=x.device, dtype=dtype)
        for b, seed in enumerate(params["seed"].tolist()):
            g = torch.Generator(device=x.device).manual_seed(int(seed))
            noise[b] = torch.randn(x.shape[1:], generator=g, device=x.device, dtype=dtype)
        std = params["std"].to(x.device, dtype).view(-1, 1, 1, 1, 1)
        return (x.to(dtype) + noise * std).to(x.dtype)


class GaussianBlur(RandomTransform):
    """Gaussian smoothing with a per-sample sigma, as a separable 3D convolution.

    Parameters
    ----------
    sigma : float or (float, float), default (0.0, 1.0)
        Standard deviation in voxels, drawn uniformly from this range per sample (the same
        for the three axes). Scale it with the grid: 1 voxel is 1.5 mm on the OpenBHB grid,
        6 mm on the coarse one.
    p : float, default 1.0
        Probability that a sample is blurred (else its sigma is 0, the identity).
    truncate : float, default 4.0
        The kernel of sample ``b`` along an axis has radius ``int(truncate * sigma + 0.5)``,
        as :func:`scipy.ndimage.gaussian_filter`.

    Notes
    -----
    Parameters: ``sigma`` (float32, ``(B, 3)``; ``apply`` also takes different sigmas per
    axis). Borders are extended by replicating the edge voxel (scipy's ``mode="nearest"``), so
    a constant volume stays constant; with that mode and the same ``truncate`` the result
    matches ``scipy.ndimage.gaussian_filter`` per sample and channel. Each axis is one grouped
    ``conv3d`` over the batch (kernels of the largest radius, zero beyond each sample's own
    radius); finding that radius costs one host-device synchronisation per call on a GPU.
    """

    def __init__(self, sigma=(0.0, 1.0), p: float = 1.0, truncate: float = 4.0) -> None:
        self.sigma = _range(sigma, "sigma", 0.0)
        self.p = _probability(p)
        if isinstance(truncate, bool) or not isinstance(truncate, (int, float)) or not truncate > 0:
            raise ValueError(f"truncate must be a positive number, got {truncate!r}")
        self.truncate = float(truncate)

    def sample(self, shape, generator=None, device=None) -> Params:
        b = _check_shape(shape)[0]
        device = torch.device("cpu") if device is None else torch.device(device)
        lo, hi = self.sigma
        sigma = lo + (hi - lo) * _uniform((b,), generator, device)
        sigma = torch.where(_uniform((b,), generator, device) < self.p, sigma,
                            torch.zeros_like(sigma))
        return {"sigma": sigma[:, None].expand(b, 3).clone()}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        _check_input(x)
        _check_params(params, {"sigma": (3,)}, x.shape[0], "GaussianBlur")
        dtype = _compute_dtype(x)
        b, c = x.shape[:2]
        sigma = params["sigma"].to(x.device, torch.float64).clamp_min(0.0)
        radius = torch.floor(self.truncate * sigma + 0.5).long()  # (B, 3)
        out = x.to(dtype).reshape(1, b * c, *x.shape[2:])
        for axis, r_max in enumerate(radius.max(dim=0).values.tolist()):
            if r_max == 0:
                continue
            k = torch.arange(-r_max, r_max + 1, device=x.device, dtype=torch.float64)
            s = sigma[:, axis, None].clamp_min(1e-12)
            phi = torch.exp(-0.5 * (k / s) ** 2)
            phi = torch.where(k.abs() <= radius[:, axis, None], phi, torch.zeros_like(phi))
            phi = phi / phi.sum(dim=1, keepdim=True)  # (B, K)
            shape = [b * c, 1, 1, 1, 1]
            shape[2 + axis] = 2 * r_max + 1
            weight = phi.repeat_interleave(c, dim=0).to(dtype).view(shape)
            pad = [0] * 6
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r_max
            out = F.conv3d(F.pad(out, pad, mode="replicate"), weight, groups=b * c)
        return _keep_format(out.reshape(x.shape).to(x.dtype), x)


class IntensityScale(RandomTransform):
    """Multiply each sample by a random factor.

    Parameters
    ----------
    scale : float or (float, float), default (0.9, 1.1)
        Factors are drawn uniformly from this range (non-negative).
    p : float, default 1.0
        Probability that a sample is scaled (else its factor is 1).

    Notes
    -----
    Parameters: ``factor`` (float32, ``(B,)``).
    """

    def __init__(self, scale=(0.9, 1.1), p: float = 1.0) -> None:
        self.scale = _range(scale, "scale", 0.0)
        self.p = _probability(p)

    def sample(self, shape, generator=None, device=None) -> Params:
        b = _check_shape(shape)[0]
        device = torch.device("cpu") if device is None else torch.device(device)
        lo, hi = self.scale
        factor = lo + (hi - lo) * _uniform((b,), generator, device)
        factor = torch.where(_uniform((b,), generator, device) < self.p, factor,
                             torch.ones_like(factor))
        return {"factor": factor}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        _check_input(x)
        _check_params(params, {"factor": ()}, x.shape[0], "IntensityScale")
        dtype = _compute_dtype(x)
        factor = params["factor"].to(x.device, dtype).view(-1, 1, 1, 1, 1)
        return (x.to(dtype) * factor).to(x.dtype)


def augmentation(name: str) -> Compose:
    """The released augmentation settings, by name.

    Parameters
    ----------
    name : {"none", "crop", "cutout", "all"}
        ``"none"``: identity. ``"crop"``: :class:`RandomCropPad` with
        :data:`RELEASED_CROP_FRACTION`. ``"cutout"``: :class:`Cutout` with
        :data:`RELEASED_CUTOUT_FRACTION` and probability 0.5. ``"all"``: that cutout, then that
        crop (the released order). See the module docstring for what was matched.

    Returns
    -------
    Compose
        Call it as ``aug(x, generator=g)`` on a ``(B, C, X, Y, Z)`` batch; the output has the
        same shape, dtype and device. ``"none"`` returns ``x`` itself.

    Examples
    --------
    >>> import torch
    >>> aug = augmentation("all")
    >>> [type(t).__name__ for t in aug.transforms]
    ['Cutout', 'RandomCropPad']
    >>> aug(torch.rand(4, 1, 31, 37, 31), generator=torch.Generator().manual_seed(0)).shape
    torch.Size([4, 1, 31, 37, 31])
    """
    if name == "none":
        return Compose([])
    if name == "crop":
        return Compose([RandomCropPad(RELEASED_CROP_FRACTION)])
    if name == "cutout":
        return Compose([Cutout(RELEASED_CUTOUT_FRACTION, p=RELEASED_CUTOUT_PROBABILITY)])
    if name == "all":
        return Compose([Cutout(RELEASED_CUTOUT_FRACTION, p=RELEASED_CUTOUT_PROBABILITY),
                        RandomCropPad(RELEASED_CROP_FRACTION)])
    raise ValueError(f"augmentation name must be one of {AUGMENTATIONS}, got {name!r}")
