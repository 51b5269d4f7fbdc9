"""The vectorised losses against naive loops written from the spec, in float64 to 1e-10.

Values and gradients over a grid of batch sizes (1 to 3 views per sample, N = 2 included),
feature dimensions, kernel widths, temperatures and kernels; ``gradcheck`` on small inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from naive_losses import (
    dense_threshold_paper,
    dense_threshold_reference,
    naive_adapn,
    naive_kernelised,
    naive_rnc,
)

from brainkit.losses import AdapNLoss, ExpLoss, RnCLoss, ThresholdLoss, YAwareLoss

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
CLASSES = {"yaware": YAwareLoss, "threshold": ThresholdLoss, "exp": ExpLoss}

# (samples, views): N = 2 with two views of one sample and with one view of two samples
SIZES = [(1, 2), (2, 1), (3, 2), (5, 1), (3, 3)]
# (D, sigma, tau)
SETTINGS = [(3, 0.5, 0.1), (8, 2.0, 0.5), (5, 1.0, 0.07)]


def laplacian(d):
    return torch.exp(-d.abs() / 3.0)


KERNELS = ["rbf", "gaussian", "cauchy", laplacian]


def batch(samples, views, dim, seed, *, normalise=True):
    """Shuffled rows; integer ages in a narrow range so that labels tie across samples."""
    g = torch.Generator().manual_seed(seed)
    ages = torch.randint(20, 20 + max(2, samples), (samples,), generator=g).to(F64)
    ages = ages + 0.5 * torch.randint(0, 2, (samples,), generator=g).to(F64)
    y = ages.repeat(views)
    z = torch.randn(samples * views, dim, generator=g, dtype=F64)
    if normalise:
        z = F.normalize(z, dim=1)
    perm = torch.randperm(samples * views, generator=g)
    return z[perm].clone().requires_grad_(True), y[perm].clone()


def assert_value_and_grad(fast, slow, z):
    (g_fast,) = torch.autograd.grad(fast, z)
    (g_slow,) = torch.autograd.grad(slow, z)
    torch.testing.assert_close(fast, slow, **TOL)
    torch.testing.assert_close(g_fast, g_slow, **TOL)
    assert fast.dtype == F64


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k if isinstance(k, str) else "callable")
@pytest.mark.parametrize("formulation", ["reference", "paper"])
@pytest.mark.parametrize("loss", sorted(CLASSES))
def test_kernelised_matches_naive(loss, formulation, kernel, size):
    for i, (dim, sigma, tau) in enumerate(SETTINGS):
        z, y = batch(*size, dim, seed=100 * i + size[0] + 7 * size[1])
        fn = CLASSES[loss](kernel=kernel, sigma=sigma, temperature=tau, formulation=formulation)
        ref = naive_kernelised(z, y, loss=loss, kernel=kernel, sigma=sigma, tau=tau, formulation=formulation)
        assert_value_and_grad(fn(z, y), ref, z)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_threshold_mean_count_matches_naive(size):
    for i, (dim, sigma, tau) in enumerate(SETTINGS):
        z, y = batch(*size, dim, seed=3 + i)
        fn = ThresholdLoss(kernel="cauchy", sigma=sigma, temperature=tau, count_reduction="mean")
        ref = naive_kernelised(
            z, y, loss="threshold", kernel="cauchy", sigma=sigma, tau=tau, count_reduction="mean"
        )
        assert_value_and_grad(fn(z, y), ref, z)


@pytest.mark.parametrize("base_tau", [0.07, 0.2])
def test_base_temperature_reaches_reference(base_tau):
    z, y = batch(4, 2, 5, seed=11)
    for loss, cls in CLASSES.items():
        fn = cls(sigma=1.5, temperature=0.2, base_temperature=base_tau)
        ref = naive_kernelised(z, y, loss=loss, sigma=1.5, tau=0.2, base_tau=base_tau)
        assert_value_and_grad(fn(z, y), ref, z)


@pytest.mark.parametrize("kernel", ["rbf", "cauchy"])
@pytest.mark.parametrize("views", [1, 2])
def test_threshold_medium_batch_matches_dense_form(kernel, views):
    # N = 48 with many ties (integer ages in 20..31): the sort-and-rank forms against
    # explicit (N, N, N) comparisons
    g = torch.Generator().manual_seed(views)
    samples = 48 // views
    y = torch.randint(20, 32, (samples,), generator=g).to(F64).repeat(views)
    z = F.normalize(torch.randn(48, 16, generator=g, dtype=F64), dim=1).requires_grad_(True)
    for reduction in ("sum", "mean"):
        fn = ThresholdLoss(kernel=kernel, sigma=2.0, count_reduction=reduction)
        ref = dense_threshold_reference(z, y, kernel=kernel, sigma=2.0, count_reduction=reduction)
        assert_value_and_grad(fn(z, y), ref, z)
    fn = ThresholdLoss(kernel=kernel, sigma=2.0, formulation="paper")
    assert_value_and_grad(fn(z, y), dense_threshold_paper(z, y, kernel=kernel, sigma=2.0), z)


@pytest.mark.parametrize("size", SIZES + [(1, 1)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_rnc_matches_naive(size, tau):
    for dim in (1, 6):
        z, y = batch(*size, dim, seed=size[0] * 13 + dim, normalise=False)
        z = (3 * z).detach().requires_grad_(True)  # raw features, not unit norm
        assert_value_and_grad(RnCLoss(temperature=tau)(z, y), naive_rnc(z, y, tau=tau), z)


def test_rnc_multidimensional_labels_use_l1():
    z, _ = batch(4, 2, 5, seed=2, normalise=False)
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 4, (8, 3), generator=g).to(F64)
    assert_value_and_grad(RnCLoss()(z, y), naive_rnc(z, y, tau=2.0), z)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("metric", ["cosine", "euclidean", "manhattan"])
def test_adapn_matches_naive(size, metric):
    n = size[0] * size[1]
    for i, (dim, sigma, tau) in enumerate(SETTINGS):
        z, y = batch(*size, dim, seed=31 * i + n)
        for k in sorted({k for k in (2, 3, n - 1) if 2 <= k < n}) + [None, n + 5]:
            fn = AdapNLoss(sigma=sigma, temperature=tau, neighbourhood_size=k, neighbour_metric=metric)
            ref = naive_adapn(z, y, sigma=sigma, tau=tau, neighbourhood_size=k, metric=metric)
            assert_value_and_grad(fn(z, y), ref, z)


def _normalised(fn, y):
    # Unit-norm inputs keep the reference row shift M_n = 1 / tau constant, so finite
    # differences agree with the detached shift (the projection head normalises anyway).
    return lambda x: fn(F.normalize(x, dim=1), y)


@pytest.mark.parametrize(
    "fn",
    [
        YAwareLoss(sigma=1.5),
        YAwareLoss(kernel="cauchy", formulation="paper", temperature=0.5),
        ThresholdLoss(sigma=1.5),
        ThresholdLoss(kernel="gaussian", sigma=1.5, count_reduction="mean"),
        ThresholdLoss(sigma=1.5, formulation="paper"),
        ExpLoss(sigma=1.5),
        ExpLoss(kernel="cauchy", formulation="paper"),
        AdapNLoss(sigma=1.5),
        AdapNLoss(sigma=1.5, neighbourhood_size=3),
        AdapNLoss(sigma=1.5, neighbourhood_size=4, neighbour_metric="euclidean"),
    ],
    ids=repr,
)
def test_gradcheck_kernelised(fn):
    z, y = batch(3, 2, 3, seed=8)
    x = z.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(_normalised(fn, y), (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_gradcheck_rnc(tau):
    z, y = batch(3, 2, 3, seed=9, normalise=False)
    x = z.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: RnCLoss(tau)(t, y), (x,), eps=1e-6, atol=1e-7)
