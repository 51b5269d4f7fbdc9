"""Pieces of the loop: batch order, augmentation seeding, sharding, the loss of a batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import brainkit.train.distributed as bdist
from brainkit.data.augment import GaussianNoise, augmentation
from brainkit.losses import make_loss
from brainkit.models import build_model
from brainkit.train import augment_views, batch_loss, epoch_batches, view_seed
from brainkit.train.distributed import gather_views, shard, shard_sizes


@pytest.mark.parametrize("n,batch,drop_last", [(10, 4, False), (10, 4, True), (8, 8, False),
                                               (3, 5, False), (9, 4, False), (9, 4, True),
                                               (5, 1, False)])
def test_epoch_batches_is_a_seeded_permutation(n, batch, drop_last):
    idx = np.arange(100, 100 + n)
    batches = epoch_batches(idx, batch_size=batch, seed=7, epoch=2, drop_last=drop_last)
    sizes = [len(b) for b in batches]
    full, rest = divmod(n, batch)
    expected = [batch] * full + ([] if drop_last or rest == 0 else [rest])
    if batch > 1 and len(expected) > 1 and expected[-1] == 1:   # joins the batch before
        expected[-2:] = [batch + 1]
    assert sizes == expected
    flat = np.concatenate(batches) if batches else np.array([], dtype=int)
    assert len(set(flat.tolist())) == len(flat) and set(flat.tolist()) <= set(idx.tolist())
    again = epoch_batches(idx, batch_size=batch, seed=7, epoch=2, drop_last=drop_last)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_epoch_batches_depend_on_seed_and_epoch_only():
    idx = np.arange(50)
    base = np.concatenate(epoch_batches(idx, batch_size=8, seed=0, epoch=3))
    assert not np.array_equal(base, np.concatenate(epoch_batches(idx, batch_size=8, seed=0,
                                                                 epoch=4)))
    assert not np.array_equal(base, np.concatenate(epoch_batches(idx, batch_size=8, seed=1,
                                                                 epoch=3)))
    # the batch size cuts the same permutation differently
    np.testing.assert_array_equal(base, np.concatenate(epoch_batches(idx, batch_size=5, seed=0,
                                                                     epoch=3)))


def test_view_seed_is_a_function_of_its_four_arguments():
    s = view_seed(0, 1, 2, 0)
    assert s == view_seed(0, 1, 2, 0) and 0 <= s < 2 ** 63
    others = {view_seed(1, 1, 2, 0), view_seed(0, 2, 2, 0), view_seed(0, 1, 3, 0),
              view_seed(0, 1, 2, 1)}
    assert s not in others and len(others) == 4


@pytest.mark.parametrize("kind", ["transform", "callable"])
def test_augment_views_do_not_depend_on_batch_composition(kind):
    torch.manual_seed(0)
    volumes = torch.rand(4, 1, 8, 9, 10)
    noise = GaussianNoise(std=(0.5, 0.5))
    aug = noise if kind == "transform" else (lambda x, generator: noise(x, generator=generator))
    a = augment_views(volumes[[0, 1, 2]], [10, 11, 12], aug, n_views=2, seed=3, epoch=5)
    b = augment_views(volumes[[2, 3, 0]], [12, 13, 10], aug, n_views=2, seed=3, epoch=5)
    assert a.shape == (6, 1, 8, 9, 10)
    # view-major: rows v * 3 + j; image 10 is j=0 in a and j=2 in b, image 12 the reverse
    for v in range(2):
        assert torch.equal(a[v * 3 + 0], b[v * 3 + 2])
        assert torch.equal(a[v * 3 + 2], b[v * 3 + 0])
    assert not torch.equal(a[0], a[3])  # the two views of an image differ
    c = augment_views(volumes[[0]], [10], aug, n_views=2, seed=3, epoch=6)
    assert not torch.equal(a[0], c[0])  # another epoch, another draw


def test_augment_views_released_crop_and_none():
    x = torch.rand(3, 1, 31, 37, 31)
    out = augment_views(x, [0, 1, 2], augmentation("crop"), n_views=2, seed=0, epoch=0)
    assert out.shape == (6, 1, 31, 37, 31) and out.dtype == x.dtype
    # crop + pad keeps the first and last axes whole, zeroes a margin of the second
    assert (out.sum(dim=(1, 2, 4)) == 0).any()
    same = augment_views(x, [0, 1, 2], None, n_views=2, seed=0, epoch=0)
    assert torch.equal(same, torch.cat([x, x]))


def test_shard_partitions_a_batch():
    batch = np.arange(11) * 3
    for world in (1, 2, 3, 4):
        sizes = shard_sizes(len(batch), world)
        parts = [shard(batch, r, world) for r in range(world)]
        assert [len(p) for p in parts] == sizes and max(sizes) - min(sizes) <= 1
        np.testing.assert_array_equal(np.concatenate(parts), batch)
    with pytest.raises(ValueError, match="rank"):
        shard(batch, 2, 2)


def test_gather_views_restores_single_process_order(monkeypatch):
    """Ranks hold view-major shards; the gathered rows must be view-major over the batch."""
    n_views, sizes = 2, [3, 2]
    rows = torch.arange(n_views * 5, dtype=torch.float32)[:, None]  # single-process order
    # rank r's local rows: view v of its samples = rows[v*5 + offset_r : ... + size_r]
    locals_ = [torch.cat([rows[v * 5 + o: v * 5 + o + s] for v in range(n_views)])
               for o, s in zip([0, 3], sizes)]
    monkeypatch.setattr(bdist, "all_gather_with_grad", lambda x, s: torch.cat(locals_))
    out = gather_views(locals_[0], sizes, n_views)
    assert torch.equal(out, rows)


def test_batch_loss_single_process_matches_direct_computation():
    torch.manual_seed(0)
    model = build_model("contrastive", widths=(4, 8, 16, 32), head_dims=(16, 8))
    x = torch.rand(6, 1, 16, 16, 16)
    y = torch.tensor([20.0, 30.0, 40.0], dtype=torch.float64).repeat(2)
    loss_fn = make_loss("yaware", sigma=5.0)
    got = batch_loss(model, loss_fn, x, y, n_views=2)
    assert torch.equal(got, loss_fn(model(x), y))

    reg = build_model("regression", widths=(4, 8, 16, 32), target_mean=30.0)
    y1 = torch.tensor([20.0, 35.0, 50.0, 61.0, 70.0, 33.0])
    got = batch_loss(reg, None, x, y1, n_views=1)
    assert torch.allclose(got, (reg(x) - y1).abs().mean())
    assert torch.allclose(got, F.l1_loss(torch.full((6,), 30.0), y1))  # zero-initialised head

    with pytest.raises(ValueError, match="rows"):
        batch_loss(nn.Flatten(), None, x, y1[:4], n_views=1)


@pytest.mark.parametrize("loss", ["yaware", "threshold", "exp", "rnc"])
def test_shared_views_give_the_full_pass_loss_and_gradients(loss):
    """Without augmentation the views are copies: one pass repeated equals the pass over
    the copies, loss and every parameter's gradient (batch norm in train mode included).
    The model runs in float64 (the loss is float32, as in training), so what is compared is
    the mathematics, not the summation order of float32 convolutions."""
    x = torch.rand(4, 1, 16, 16, 16, dtype=torch.float64)
    y = torch.tensor([20.0, 30.0, 40.0, 52.0], dtype=torch.float64).repeat(2)
    loss_fn = make_loss(loss, **({"sigma": 5.0} if loss != "rnc" else {}))
    grads = []
    for shared in (False, True):
        torch.manual_seed(0)
        model = build_model("contrastive", widths=(4, 8, 16, 32), head_dims=(16, 8))
        model = model.double().train()
        inputs = x if shared else x.repeat(2, 1, 1, 1, 1)
        value = batch_loss(model, loss_fn, inputs, y, n_views=2, shared_views=shared)
        value.backward()
        grads.append((value.detach(), [p.grad.clone() for p in model.parameters()]))
    (full, g_full), (once, g_once) = grads
    assert torch.allclose(full, once, rtol=1e-6, atol=0)
    for a, b in zip(g_full, g_once):
        assert (a - b).abs().max() <= 1e-6 * a.abs().max()


def _conv_model(memory_format):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 2, 5, 5, 5))
    return model.to(memory_format=memory_format)


def _adam_step(model, fused, state=None, load=None):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if fused else {}))
    if state is not None:
        load(opt, state)
    for i, p in enumerate(model.parameters()):
        g = torch.Generator().manual_seed(i)
        p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g))  # p's layout
    opt.step()
    return opt


def test_resume_keeps_this_runs_adam_kernel_and_layouts():
    """A checkpoint of a CUDA run (fused Adam, channels_last_3d moments) resumed on the CPU
    (plain layout, foreach Adam): optimizer.load_state_dict alone brings back fused=True and
    the channels-last moments, and the fused kernel then updates the wrong elements (on CUDA
    it raises a layout error instead). _load_optimizer_state keeps the current kernel and
    gives each moment its parameter's layout, so the step equals a clean contiguous resume."""
    import copy
    from io import BytesIO

    from brainkit.train.loop import _load_optimizer_state

    gpu_like = _conv_model(torch.channels_last_3d)
    saved = _adam_step(gpu_like, fused=True).state_dict()
    buffer = BytesIO()
    torch.save(saved, buffer)  # as the checkpoint does: strides are kept
    saved = torch.load(BytesIO(buffer.getvalue()), weights_only=True)
    conv = next(iter(saved["state"].values()))["exp_avg"]
    assert conv.dim() == 5 and not conv.is_contiguous(), "the test needs channels-last moments"

    def clean(opt, state):  # the reference: the same values, contiguous, non-fused
        opt.load_state_dict({"param_groups": [dict(g, fused=None) for g in
                                              state["param_groups"]],
                             "state": {k: {n: v.contiguous() for n, v in s.items()}
                                       for k, s in state["state"].items()}})

    weights = {k: v.contiguous() for k, v in gpu_like.state_dict().items()}
    runs = {}
    for name, load in [("reference", clean), ("fixed", _load_optimizer_state),
                       ("plain load_state_dict", lambda o, s: o.load_state_dict(s))]:
        model = _conv_model(torch.contiguous_format)
        model.load_state_dict(weights)
        opt = _adam_step(model, fused=False, state=copy.deepcopy(saved), load=load)
        runs[name] = (opt, [p.detach().clone() for p in model.parameters()])
    opt, fixed = runs["fixed"]
    assert not opt.param_groups[0]["fused"]
    for p in opt.param_groups[0]["params"]:
        assert all(v.stride() == p.stride() for k, v in opt.state[p].items() if k != "step")
    for got, want in zip(fixed, runs["reference"][1]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    # what the plain load did: the fused kernel on mismatched layouts (torch >= 2.4 on CPU)
    plain_opt, plain = runs["plain load_state_dict"]
    assert plain_opt.param_groups[0]["fused"]
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(plain, runs["reference"][1]))


def test_lr_factor_step_cosine_and_warm_up():
    from brainkit.train.loop import lr_factor

    step = lr_factor("step", epochs=30, lr_step=10, lr_gamma=0.5)
    assert [step(e) for e in (0, 9, 10, 29)] == [1.0, 1.0, 0.5, 0.25]
    cosine = lr_factor("cosine", epochs=10, warmup_epochs=2)
    values = [cosine(e) for e in range(10)]
    assert values[:2] == [1 / 3, 2 / 3]                    # linear warm-up
    assert values[2] == 1.0 and all(a > b for a, b in zip(values[2:], values[3:]))
    assert values[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 7 / 8)))
    assert lr_factor("step", epochs=5, warmup_epochs=1)(0) == 0.5
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        lr_factor("linear", epochs=3)
