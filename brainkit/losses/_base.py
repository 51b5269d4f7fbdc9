"""Shared plumbing for the losses: argument checks, input checks, precision, reductions.

Private module: the public API lives in :mod:`brainkit.losses`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from numbers import Integral, Real

import torch

__all__: list[str] = []

_HALF = (torch.float16, torch.bfloat16)


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float after checking it is a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` after checking it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_int(name: str, value: int, minimum: int) -> int:
    """Return ``value`` as an int after checking it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def prepare_inputs(
    z: torch.Tensor, y: torch.Tensor, *, loss: str, multidim_labels: bool = False,
    temperature: float | None = None, distance: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``z`` (N, D) and ``y`` (N,) and bring them to the loss's compute precision.

    ``z`` in float16 / bfloat16 is upcast to float32; float32 and float64 are kept. Labels
    keep a float32 / float64 dtype (kernels are computed in it), half-precision labels become
    float32 and integer / boolean labels take the compute dtype of ``z``.

    With ``temperature``, ``z`` must also be small enough that the similarities
    ``<z_n, z_m> / temperature`` (or, with ``distance``, ``||z_n - z_m|| / temperature``)
    cannot overflow the compute dtype: every later step of the losses is then finite, value
    and gradient. The bound used is ``D max|z|^2 / temperature`` (distances: the larger of
    ``2 sqrt(D) max|z| / temperature`` and the squared sum ``4 D max|z|^2``), at most a
    quarter of the dtype's largest number.

    Raises
    ------
    TypeError
        If ``z`` or ``y`` is not a tensor, or ``z`` is not floating point.
    ValueError
        On a shape mismatch, an empty batch, different devices, a NaN / infinite value, or
        ``z`` so large that its similarities would overflow.
    """
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{loss}: z must be a torch.Tensor of shape (N, D), got {type(z).__name__}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{loss}: y must be a torch.Tensor of shape (N,), got {type(y).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"{loss}: z must be a floating-point tensor, got dtype {z.dtype}")
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(
            f"{loss}: z must have shape (N, D) with N >= 1 and D >= 1 (all views of all samples "
            f"stacked), got shape {tuple(z.shape)}"
        )
    n = z.shape[0]
    label_shapes = "(N,) or (N, L)" if multidim_labels else "(N,)"
    ok_ndim = y.ndim == 1 or (multidim_labels and y.ndim == 2 and y.shape[1] >= 1)
    if not ok_ndim or y.shape[0] != n:
        raise ValueError(
            f"{loss}: y must have shape {label_shapes} with N = {n} (one label per row of z), "
            f"got shape {tuple(y.shape)}"
        )
    if y.device != z.device:
        raise ValueError(f"{loss}: z is on {z.device} but y is on {y.device}; put them on one device")
    if y.is_complex() or z.is_complex():
        raise TypeError(f"{loss}: complex tensors are not supported")
    if z.dtype in _HALF:
        z = z.float()
    if y.is_floating_point():
        if y.dtype in _HALF:
            y = y.float()
    else:
        y = y.to(z.dtype)
    z_max = float(z.detach().abs().amax())  # NaN propagates: one check for NaN and inf
    if not math.isfinite(z_max):
        raise ValueError(f"{loss}: z contains NaN or infinite values")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{loss}: y contains NaN or infinite values")
    if temperature is not None:
        dim = z.shape[1]
        if distance:  # ||z_n - z_m|| sums squares first: bound those too
            bound = max(2.0 * math.sqrt(dim) * z_max / temperature, 4.0 * dim * z_max * z_max)
        else:
            bound = dim * z_max * z_max / temperature
        if not bound <= torch.finfo(z.dtype).max / 4:
            what = "||z_n - z_m||" if distance else "<z_n, z_m>"
            raise ValueError(
                f"{loss}: z has values up to {z_max:.3g}, so {what} / temperature could overflow "
                f"{z.dtype}; "
                + ("scale the features down" if distance else
                   "the kernelised losses expect L2-normalised z (the projection head's output)")
            )
    return z, y


@contextlib.contextmanager
def autocast_disabled(device: torch.device) -> Iterator[None]:
    """Run the loss body with autocast off on ``device`` (so it stays in float32 or above)."""
    if device.type in ("cuda", "cpu"):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield


def label_weights(kernel: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, *, loss: str) -> torch.Tensor:
    """``W[n, m] = K(y_n - y_m)``, shape (N, N), computed in the dtype of ``y``.

    The output of a user callable is checked (shape, finite, non-negative).
    """
    w = kernel(y[:, None] - y[None, :])
    if not isinstance(w, torch.Tensor) or w.shape != (y.shape[0], y.shape[0]):
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(
            f"{loss}: the kernel must map an (N, N) tensor of label differences to (N, N) "
            f"weights, got {got}"
        )
    if not w.is_floating_point():
        w = w.to(y.dtype)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{loss}: the kernel returned negative, NaN or infinite weights")
    return w


def label_log_weights(kernel: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor,
                      w: torch.Tensor) -> torch.Tensor:
    """``log W[n, m]``, shape (N, N), in the dtype of ``y``, ``-inf`` exactly where ``w == 0``.

    A named kernel (with a ``log`` method, :class:`brainkit.losses.kernels.Kernel`) gives
    its log directly, so weights that are tiny (subnormal) keep their full precision;
    another callable gives ``log(w)``. The zero pattern is that of ``w``, so which weights
    count (and which anchors have positives) does not change.
    """
    log = getattr(kernel, "log", None)
    if callable(log):
        log_w = log(y[:, None] - y[None, :]).to(w.dtype)
    else:
        with torch.no_grad():
            log_w = torch.log(w)
    return log_w.masked_fill(w == 0, -math.inf)


def normalised_weights(log_w: torch.Tensor, mask: torch.Tensor, dim: int | None = 1
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``W / sum W`` over ``mask`` (per row, or over everything with ``dim=None``), computed
    in log space: finite, in [0, 1], and summing to 1 even when every weight underflows.

    Dividing by a sum of subnormal weights overflows in the backward pass (the gradient of
    ``a / s`` holds ``1 / s``); a softmax of the log weights never does.

    Parameters
    ----------
    log_w : torch.Tensor of shape (N, M)
        ``-inf`` for zero weights.
    mask : torch.Tensor of bool, shape (N, M)
        Entries that take part.
    dim : int or None, default 1
        Normalise each row (1) or the whole matrix (None).

    Returns
    -------
    p : torch.Tensor of shape (N, M), dtype of ``log_w``
        The normalised weights, 0 outside ``mask`` and in rows (or a matrix) with no
        positive weight.
    has : torch.Tensor of bool, shape (N,) (or a scalar for ``dim=None``)
        Whether there is a positive weight to normalise.
    """
    x = log_w.masked_fill(~mask, -math.inf)
    if dim is None:
        total = torch.logsumexp(x.reshape(-1), dim=0)
        has = torch.isfinite(total)
        safe = torch.where(has, total, torch.zeros_like(total))
        p = torch.exp(x - safe)
        return torch.where(has, p, torch.zeros_like(p)), has
    total = torch.logsumexp(x, dim=dim, keepdim=True)
    has = torch.isfinite(total)
    safe = torch.where(has, total, torch.zeros_like(total))
    p = torch.exp(x - safe)
    return torch.where(has, p, torch.zeros_like(p)), has.squeeze(dim)


def masked_logsumexp(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise ``log sum_{m: mask[n, m]} exp x[n, m]``, safe for empty rows.

    Parameters
    ----------
    x : torch.Tensor of shape (N, M)
    mask : torch.Tensor of bool, shape (N, M)

    Returns
    -------
    lse : torch.Tensor of shape (N,)
        The masked log-sum-exp; a finite dummy value for rows with no selected entry.
    has : torch.Tensor of bool, shape (N,)
        Whether the row selects at least one entry. Callers must drop rows where it is False.
    """
    has = mask.any(dim=1)
    x = x.masked_fill(~mask, -math.inf)
    x = x.masked_fill(~has[:, None], 0.0)
    return torch.logsumexp(x, dim=1), has


def mean_over_valid(per_anchor: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_anchor`` (N,) over ``valid`` (N,) anchors; exactly 0 when none is valid.

    Invalid entries must be finite (they are replaced by 0, so their gradient is 0).
    """
    kept = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
    count = valid.sum().clamp_min(1).to(per_anchor.dtype)
    return kept.sum() / count


def sort_with_strict_rank(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort each row and count, for every entry, the entries of its row strictly below it.

    Parameters
    ----------
    x : torch.Tensor of shape (N, M)
        No NaN (infinities are fine and tie with each other).

    Returns
    -------
    sorted_x : torch.Tensor of shape (N, M)
        Each row in ascending order.
    order : torch.Tensor of int64, shape (N, M)
        ``sorted_x = x.gather(1, order)``.
    rank : torch.Tensor of int64, shape (N, M)
        ``rank[n, j] = #{t : x[n, t] < x[n, j]}``; tied entries share the rank of the first
        of them in sorted order, so the entries below ``x[n, j]`` are exactly the sorted
        positions ``0 .. rank[n, j] - 1``. O(N M log M), like ``searchsorted`` but faster:
        the first position of each run of equal values, carried forward with ``cummax``.
    """
    sorted_x, order = torch.sort(x, dim=1)
    positions = torch.arange(x.shape[1], device=x.device).expand_as(order)
    starts_run = torch.ones_like(sorted_x, dtype=torch.bool)
    starts_run[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    first = torch.where(starts_run, positions, torch.zeros_like(positions)).cummax(dim=1).values
    rank = torch.empty_like(first).scatter_(1, order, first)
    return sorted_x, order, rank
