"""Properties of the loss family: symmetries, closed forms, edge cases, precision, errors."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F
from naive_losses import naive_kernelised

from brainkit.losses import (
    LOSS_CLASSES,
    AdapNLoss,
    ExpLoss,
    RnCLoss,
    ThresholdLoss,
    YAwareLoss,
    make_loss,
)
from brainkit.losses import adapn as adapn_mod
from brainkit.losses import factory as factory_mod
from brainkit.losses import kernelized as kernelized_mod
from brainkit.losses import kernels as kernels_mod
from brainkit.losses import rnc as rnc_mod

F64 = torch.float64


def views_batch(samples, views, dim=8, seed=0, dtype=F64, spread=30):
    g = torch.Generator().manual_seed(seed)
    ages = (20 + spread * torch.rand(samples, generator=g, dtype=F64)).repeat(views)
    z = F.normalize(torch.randn(samples * views, dim, generator=g, dtype=F64), dim=1)
    return z.to(dtype), ages


ALL = [
    YAwareLoss(sigma=2.0),
    YAwareLoss(sigma=2.0, formulation="paper"),
    ThresholdLoss(sigma=2.0),
    ThresholdLoss(kernel="cauchy", sigma=0.5, count_reduction="mean"),
    ThresholdLoss(sigma=2.0, formulation="paper"),
    ExpLoss(sigma=2.0),
    ExpLoss(kernel="gaussian", sigma=2.0, formulation="paper"),
    RnCLoss(),
    AdapNLoss(sigma=2.0),
    AdapNLoss(sigma=2.0, neighbourhood_size=6),
    AdapNLoss(sigma=2.0, neighbourhood_size=6, neighbour_metric="manhattan"),
]


@pytest.mark.parametrize("fn", ALL, ids=repr)
def test_row_order_invariance(fn):
    z, y = views_batch(8, 2, seed=1)
    y[3] = y[5]  # a tie across samples
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(2))
    z1 = z.clone().requires_grad_(True)
    z2 = z[perm].clone().requires_grad_(True)
    a, b = fn(z1, y), fn(z2, y[perm])
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z1.grad[perm], z2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", ["rbf", "gaussian", "cauchy"])
@pytest.mark.parametrize("tau, base_tau", [(0.1, 0.07), (0.5, 0.07), (0.2, 0.3)])
def test_yaware_paper_and_reference_differ_by_tau_over_base(kernel, tau, base_tau):
    z, y = views_batch(6, 2, seed=3)
    kw = dict(kernel=kernel, sigma=3.0, temperature=tau, base_temperature=base_tau)
    ref = YAwareLoss(formulation="reference", **kw)(z, y)
    paper = YAwareLoss(formulation="paper", **kw)(z, y)
    torch.testing.assert_close(ref, paper * tau / base_tau, rtol=1e-12, atol=0)


@pytest.mark.parametrize("views", [1, 2, 3])
def test_threshold_mean_count_is_a_constant_shift(views):
    z, y = views_batch(7, views, seed=views)
    z1 = z.clone().requires_grad_(True)
    z2 = z.clone().requires_grad_(True)
    tau, base_tau = 0.1, 0.07
    total = ThresholdLoss(sigma=4.0, count_reduction="sum")(z1, y)
    mean = ThresholdLoss(sigma=4.0, count_reduction="mean")(z2, y)
    total.backward()
    mean.backward()
    n = 7 * views
    torch.testing.assert_close(mean, total - tau / base_tau * math.log(n), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("formulation", ["reference", "paper"])
def test_exp_with_zero_width_kernel_is_infonce(formulation):
    # rbf with sigma = 1e-3 and integer ages: W = 1 for the other view, exactly 0 otherwise,
    # so every anchor has one positive p (weight 1, repelling with exp(0) = 1) and the
    # others repel fully: l_n = -c (x_np - log(1 + sum_{t != n, p} exp x_nt)).
    samples, tau, base_tau = 6, 0.2, 0.07
    z, _ = views_batch(samples, 2, seed=4)
    y = torch.arange(samples, dtype=F64).repeat(2)
    loss = ExpLoss(sigma=1e-3, temperature=tau, formulation=formulation)(z, y)
    s = z @ z.T / tau
    if formulation == "reference":
        s = s - s.max(1, keepdim=True).values
        c = tau / base_tau
    else:
        c = 1.0
    n = 2 * samples
    partner = (torch.arange(n) + samples) % n
    negatives = ~torch.eye(n, dtype=torch.bool)
    negatives[torch.arange(n), partner] = False
    pos = s[torch.arange(n), partner]
    expected = -(c * (pos - torch.log(1 + (s.exp() * negatives).sum(1)))).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


NO_POSITIVE = [
    YAwareLoss(sigma=1e-3),
    YAwareLoss(sigma=1e-3, formulation="paper"),
    ThresholdLoss(sigma=1e-3),
    ThresholdLoss(sigma=1e-3, formulation="paper"),
    ExpLoss(sigma=1e-3),
    ExpLoss(sigma=1e-3, formulation="paper"),
    AdapNLoss(sigma=1e-3),
    AdapNLoss(sigma=1e-3, neighbourhood_size=2),
]


@pytest.mark.parametrize("fn", NO_POSITIVE, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_no_positive_gives_exact_zero_and_zero_gradient(fn, dtype):
    # one view per sample, distinct integer labels, a kernel too narrow to reach a neighbour
    z, _ = views_batch(5, 1, seed=5, dtype=dtype)
    z.requires_grad_(True)
    y = torch.arange(5, dtype=F64)
    loss = fn(z, y)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("fn", ALL + NO_POSITIVE, ids=repr)
def test_single_row_gives_zero(fn):
    z = torch.tensor([[0.6, 0.8]], dtype=F64, requires_grad=True)
    loss = fn(z, torch.tensor([40.0], dtype=F64))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("formulation", ["reference", "paper"])
def test_threshold_with_all_labels_equal_is_finite(formulation):
    # reference: every count C[n, m] is 0 (no strictly smaller weight), the released code
    # gives an infinite loss; brainkit drops those anchors -> exactly 0.
    # paper: no row is less similar than a positive, each term is S - log exp S = 0.
    z, _ = views_batch(4, 2, seed=6)
    z.requires_grad_(True)
    loss = ThresholdLoss(formulation=formulation)(z, torch.full((8,), 50.0, dtype=F64))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(z.grad).all()


def test_float32_underflow_drops_anchors_without_nan():
    # rbf(15) = exp(-112.5) is 0 in float32 but not in float64: with float32 labels the rows
    # 2 and 3 lose their only positive and are dropped; the others are unchanged.
    z, _ = views_batch(4, 1, seed=7)
    y32 = torch.tensor([0.0, 0.5, 20.0, 35.0])
    y_far = torch.tensor([0.0, 0.5, 1000.0, 2000.0], dtype=F64)  # drops 2, 3 in any precision
    for loss in ("yaware", "exp"):
        for formulation in ("reference", "paper"):
            zz = z.float().requires_grad_(True)
            fn = make_loss(loss, sigma=1.0, formulation=formulation)
            value = fn(zz, y32)
            value.backward()
            assert torch.isfinite(zz.grad).all()
            expected = naive_kernelised(z, y_far, loss=loss, sigma=1.0, formulation=formulation)
            torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-5)
    zz = z.float().requires_grad_(True)
    value = ThresholdLoss(sigma=1.0)(zz, y32)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(zz.grad).all()


@pytest.mark.parametrize("fn", ALL, ids=repr)
@pytest.mark.parametrize("tau", [None, 0.01])
def test_float32_agrees_with_float64(fn, tau):
    if tau is not None:
        fn = type(fn)(**{**_kwargs(fn), "temperature": tau})
    z, y = views_batch(16, 2, seed=8)
    z32 = z.float().requires_grad_(True)
    z64 = z.clone().requires_grad_(True)
    a, b = fn(z32, y.float()), fn(z64, y)
    a.backward()
    b.backward()
    assert a.dtype == torch.float32 and b.dtype == F64
    assert torch.isfinite(a) and torch.isfinite(z32.grad).all()
    torch.testing.assert_close(a.double(), b, rtol=2e-4, atol=1e-4)
    scale = z64.grad.abs().max()
    torch.testing.assert_close(z32.grad.double() / scale, z64.grad / scale, rtol=0, atol=1e-3)


def _kwargs(fn):
    if isinstance(fn, RnCLoss):
        return {"temperature": fn.temperature}
    if isinstance(fn, AdapNLoss):
        return dict(sigma=fn.sigma, neighbourhood_size=fn.neighbourhood_size, neighbour_metric=fn.neighbour_metric)
    kw = dict(kernel=fn.kernel, sigma=fn.sigma, formulation=fn.formulation)
    if isinstance(fn, ThresholdLoss):
        kw["count_reduction"] = fn.count_reduction
    return kw


@pytest.mark.parametrize("fn", ALL, ids=repr)
def test_bf16_autocast_computes_in_float32(fn):
    z, y = views_batch(8, 2, seed=9, dtype=torch.float32)
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    x = z.clone().requires_grad_(True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        emb = x @ w  # bf16 under autocast, like a model's output
        assert emb.dtype == torch.bfloat16
        loss = fn(emb, y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, fn(emb.detach().float(), y), rtol=1e-6, atol=1e-6)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_half_inputs_and_integer_labels():
    z, y = views_batch(6, 2, seed=10, dtype=torch.float32, spread=0)
    y = torch.tensor([21, 25, 30, 30, 41, 52]).repeat(2)
    fn = ThresholdLoss(sigma=3.0)
    out = fn(z.half(), y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fn(z.half().float(), y.double()), rtol=1e-6, atol=1e-6)


def test_adapn_without_neighbourhood_equals_exp_when_positive_mass_is_uniform():
    # Two samples x three views: every anchor has the same sum of positive weights, so the
    # global normalisation of AdapN equals ExpLoss's per-anchor mean.
    z, y = views_batch(2, 3, seed=11)
    a = AdapNLoss(sigma=5.0)(z, y)
    b = ExpLoss(kernel="rbf", sigma=5.0)(z, y)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    y_uneven = torch.tensor([20.0, 21.0, 40.0, 20.0, 21.0, 40.0], dtype=F64)
    assert not torch.isclose(AdapNLoss(sigma=5.0)(z, y_uneven), ExpLoss(sigma=5.0)(z, y_uneven))


def test_large_batch_threshold_runs():
    # N = 1024 in float32: no (N, N, N) tensor, forward + backward of both formulations
    z, y = views_batch(512, 2, dim=32, seed=12, dtype=torch.float32)
    for formulation in ("reference", "paper"):
        x = z.clone().requires_grad_(True)
        loss = ThresholdLoss(sigma=2.0, formulation=formulation)(x, y)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_make_loss():
    assert set(LOSS_CLASSES) == {"yaware", "threshold", "exp", "rnc", "adapn"}
    for name, cls in LOSS_CLASSES.items():
        assert type(make_loss(name)) is cls
    fn = make_loss("threshold", kernel="cauchy", sigma=2.0, temperature=0.2, count_reduction="mean")
    assert (fn.kernel, fn.sigma, fn.temperature, fn.count_reduction) == ("cauchy", 2.0, 0.2, "mean")
    assert make_loss("rnc", temperature=3.0).temperature == 3.0
    with pytest.raises(ValueError, match="name must be one of"):
        make_loss("l1")
    with pytest.raises(TypeError, match="RnCLoss"):
        make_loss("rnc", sigma=1.0)


@pytest.mark.parametrize(
    "build, err, match",
    [
        (lambda: YAwareLoss(kernel="laplace"), ValueError, "kernel must be one of"),
        (lambda: YAwareLoss(sigma=0), ValueError, "sigma must be a finite number > 0"),
        (lambda: ExpLoss(temperature=-0.1), ValueError, "temperature must be"),
        (lambda: ExpLoss(temperature="0.1"), TypeError, "temperature must be a real number"),
        (lambda: ExpLoss(base_temperature=0.0), ValueError, "base_temperature must be"),
        (lambda: YAwareLoss(formulation="printed"), ValueError, "formulation must be one of"),
        (lambda: ThresholdLoss(count_reduction="max"), ValueError, "count_reduction must be one of"),
        (lambda: ThresholdLoss(formulation="paper", count_reduction="mean"), ValueError, "only to formulation='reference'"),
        (lambda: RnCLoss(temperature=0.0), ValueError, "temperature must be"),
        (lambda: AdapNLoss(sigma=float("inf")), ValueError, "sigma must be"),
        (lambda: AdapNLoss(neighbour_metric="chebyshev"), ValueError, "neighbour_metric must be one of"),
        (lambda: AdapNLoss(neighbourhood_size=1), ValueError, "neighbourhood_size must be >= 2"),
        (lambda: AdapNLoss(neighbourhood_size=4.0), TypeError, "neighbourhood_size must be an integer"),
    ],
)
def test_argument_errors(build, err, match):
    with pytest.raises(err, match=match):
        build()


@pytest.mark.parametrize("fn", [YAwareLoss(), RnCLoss(), AdapNLoss()], ids=repr)
def test_input_errors(fn):
    name = type(fn).__name__
    z = F.normalize(torch.randn(6, 4, dtype=F64), dim=1)
    y = torch.arange(6, dtype=F64)
    with pytest.raises(TypeError, match=f"{name}: z must be a torch.Tensor"):
        fn(z.numpy(), y)
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        fn(z, y.tolist())
    with pytest.raises(TypeError, match="floating-point"):
        fn(torch.ones(6, 4, dtype=torch.int64), y)
    with pytest.raises(ValueError, match=r"z must have shape \(N, D\).*got shape \(6,\)"):
        fn(z[:, 0], y)
    with pytest.raises(ValueError, match=r"z must have shape \(N, D\)"):
        fn(z[None], y)
    with pytest.raises(ValueError, match=r"z must have shape \(N, D\)"):
        fn(z[:0], y[:0])
    with pytest.raises(ValueError, match="y must have shape.*N = 6.*got shape \\(5,\\)"):
        fn(z, y[:5])
    bad = z.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="z contains NaN"):
        fn(bad, y)
    bad_y = y.clone()
    bad_y[0] = float("inf")
    with pytest.raises(ValueError, match="y contains NaN or infinite"):
        fn(z, bad_y)
    if not isinstance(fn, RnCLoss):
        with pytest.raises(ValueError, match=r"y must have shape \(N,\)"):
            fn(z, y[:, None])


def test_callable_kernel_output_is_checked():
    z = F.normalize(torch.randn(4, 3, dtype=F64), dim=1)
    y = torch.arange(4, dtype=F64)
    with pytest.raises(ValueError, match=r"to \(N, N\) weights, got \(4,\)"):
        YAwareLoss(kernel=lambda d: d[0])(z, y)
    with pytest.raises(ValueError, match="negative, NaN or infinite"):
        ExpLoss(kernel=lambda d: -d.abs())(z, y)


@pytest.mark.parametrize("module", [kernels_mod, kernelized_mod, rnc_mod, adapn_mod, factory_mod])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_sort_with_strict_rank_counts_entries_strictly_below():
    from brainkit.losses._base import sort_with_strict_rank

    g = torch.Generator().manual_seed(13)
    x = torch.randint(0, 5, (7, 9), generator=g).to(F64)
    x[0, 3] = float("inf")
    x[1, :2] = float("-inf")
    x[2] = 1.0  # one long tie
    sorted_x, order, rank = sort_with_strict_rank(x)
    assert torch.equal(sorted_x, x.gather(1, order))
    expected = (x[:, None, :] < x[:, :, None]).sum(-1)  # [n, j] = #{t : x[n, t] < x[n, j]}
    assert torch.equal(rank, expected)
