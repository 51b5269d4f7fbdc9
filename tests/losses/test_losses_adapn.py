"""AdapN: the released neighbourhood schedule and the per-epoch neighbourhood attribute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainkit.losses import AdapNLoss, adapn_neighbourhood

F64 = torch.float64


def released_k(epoch, b, k_end, s, e):
    """The spec's formula, K = max(int(B - (B - K_end) / (E // S - 1) * (epoch // S)), K_end)."""
    return max(int(b - (b - k_end) / (e // s - 1) * (epoch // s)), k_end)


@pytest.mark.parametrize("b, views, k_end, step, epochs", [(32, 2, 4, 10, 300), (64, 1, 8, 7, 100), (48, 3, 2, 1, 20)])
def test_schedule_matches_formula(b, views, k_end, step, epochs):
    sizes = [
        adapn_neighbourhood(e, batch_size=b, n_views=views, final_k=k_end, step=step, epochs=epochs)
        for e in range(1, epochs + 1)
    ]
    assert sizes == [views * released_k(e, b, k_end, step, epochs) for e in range(1, epochs + 1)]
    if step > 1:
        assert sizes[0] == views * b  # epoch 1 // step == 0: the whole batch
    assert sizes[-1] == views * k_end  # ends at the final size
    assert all(a >= c for a, c in zip(sizes, sizes[1:]))  # never grows


def test_schedule_known_values():
    kw = dict(batch_size=32, n_views=2, final_k=4, step=10, epochs=300)
    # 28 samples shed over 29 steps: -0.9655 per 10 epochs, truncated
    assert [adapn_neighbourhood(e, **kw) for e in (1, 9, 10, 20, 150, 290, 300)] == [64, 64, 62, 60, 34, 8, 8]


def test_schedule_off():
    kw = dict(n_views=2, final_k=4, epochs=300)
    assert adapn_neighbourhood(50, batch_size=16, step=10, **kw) is None  # released: B < 32
    assert adapn_neighbourhood(50, batch_size=16, step=10, min_batch_size=8, **kw) == 2 * released_k(50, 16, 4, 10, 300)
    assert adapn_neighbourhood(50, batch_size=32, step=0, **kw) is None


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(epoch=0), ValueError, "epoch must be >= 1"),
        (dict(epoch=1.5), TypeError, "epoch must be an integer"),
        (dict(final_k=40), ValueError, "final_k must be <= batch_size"),
        (dict(final_k=1, n_views=1), ValueError, "n_views \\* final_k must be >= 2"),
        (dict(step=-1), ValueError, "step must be >= 0"),
        (dict(step=200), ValueError, "epochs // step must be >= 2"),
        (dict(batch_size=True), TypeError, "batch_size must be an integer"),
    ],
)
def test_schedule_errors(kwargs, err, match):
    base = dict(epoch=5, batch_size=32, n_views=2, final_k=4, step=10, epochs=300)
    base.update(kwargs)
    epoch = base.pop("epoch")
    with pytest.raises(err, match=match):
        adapn_neighbourhood(epoch, **base)


def test_neighbourhood_is_settable_per_epoch():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(12, 6, generator=g, dtype=F64), dim=1)
    y = (20 + 40 * torch.rand(6, generator=g, dtype=F64)).repeat(2)
    fn = AdapNLoss(sigma=5.0)
    everything = fn(z, y)
    values = []
    for size in (12, 8, 4, 2):
        fn.neighbourhood_size = size
        values.append(fn(z, y))
    assert values[0] == everything  # the whole batch = no neighbourhood
    assert len({v.item() for v in values}) == 4  # each size changes the loss
    fn.neighbourhood_size = 100  # above N: every row
    assert fn(z, y) == everything
    fn.neighbourhood_size = None
    assert fn(z, y) == everything
    with pytest.raises(ValueError, match="neighbourhood_size must be >= 2"):
        fn.neighbourhood_size = 0
    assert fn.neighbourhood_size is None  # a refused value leaves the old one
    fn.neighbourhood_size = adapn_neighbourhood(300, batch_size=32, n_views=2, final_k=4, step=10, epochs=300)
    assert fn.neighbourhood_size == 8
    assert "neighbourhood_size=8" in repr(fn)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "manhattan"])
def test_neighbourhood_picks_the_nearest_rows(metric):
    # planted: rows on a circle, the anchor's nearest rows are its angular neighbours
    n = 10
    angles = torch.arange(n, dtype=F64) * (2 * torch.pi / n)
    z = torch.stack([angles.cos(), angles.sin()], dim=1)
    fn = AdapNLoss(neighbourhood_size=3, neighbour_metric=metric)
    logits = z @ z.T / fn.temperature
    mask = fn.neighbourhood_mask(z, logits - logits.max(1, keepdim=True).values)
    assert mask.sum(1).tolist() == [2] * n  # size - 1 others per anchor
    assert not mask.diagonal().any()
    for a in range(n):
        assert set(mask[a].nonzero().flatten().tolist()) == {(a - 1) % n, (a + 1) % n}
