"""Contrastive and regression models: shapes, L2 norm, age offset, embed layers, factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainkit.models import ContrastiveModel, RegressionModel, ResNet3d, build_model, resnet3d

NARROW = (8, 16, 32, 64)
SHAPE = (3, 1, 31, 37, 31)  # the 6 mm grid


@pytest.fixture
def x():
    return torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0))


def test_contrastive_head_structure_and_output(x):
    torch.manual_seed(0)
    m = ContrastiveModel(resnet3d(10, widths=NARROW), head_dims=(512, 128))
    linears = [mod for mod in m.head if isinstance(mod, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64, 512), (512, 128)]
    assert isinstance(m.head[1], nn.ReLU)
    z = m(x)
    assert z.shape == (3, 128)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    # the output is the normalised head applied to the encoder features
    raw = m.head(m.encoder(x))
    torch.testing.assert_close(z, raw / raw.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("head_dims", [(16,), (32, 8), (32, 24, 16)])
def test_contrastive_head_dims(head_dims, x):
    m = ContrastiveModel(resnet3d(10, widths=NARROW), head_dims=head_dims)
    linears = [mod for mod in m.head if isinstance(mod, nn.Linear)]
    dims = (64,) + head_dims
    assert [(lin.in_features, lin.out_features) for lin in linears] == list(zip(dims[:-1], dims[1:]))
    assert sum(isinstance(mod, nn.ReLU) for mod in m.head) == len(head_dims) - 1
    assert m(x).shape == (3, head_dims[-1]) and m.out_features == head_dims[-1]


def test_contrastive_embed_layers(x):
    torch.manual_seed(0)
    m = ContrastiveModel(resnet3d(10, widths=NARROW), head_dims=(32, 16)).eval()
    proj = m.embed(x, layer="projection")
    torch.testing.assert_close(proj, m(x))
    torch.testing.assert_close(m.embed(x), proj)  # projection is the default
    enc = m.embed(x, layer="encoder")
    assert enc.shape == (3, 64)
    torch.testing.assert_close(enc, m.encoder(x))
    with pytest.raises(ValueError, match="layer"):
        m.embed(x, layer="head")


def test_regression_starts_at_target_mean(x):
    r = RegressionModel(resnet3d(10, widths=NARROW), target_mean=62.5, target_scale=14.0)
    y = r(x)
    assert y.shape == (3,)
    torch.testing.assert_close(y, torch.full((3,), 62.5))
    # zeroing the head explicitly, whatever its init, gives the mean too
    with torch.no_grad():
        r.head.weight.normal_()
        r.head.bias.zero_()
    assert not torch.allclose(r(x), torch.full((3,), 62.5))
    with torch.no_grad():
        r.head.weight.zero_()
    torch.testing.assert_close(r(x), torch.full((3,), 62.5))


def test_regression_output_is_scaled_head(x):
    torch.manual_seed(0)
    r = RegressionModel(resnet3d(10, widths=NARROW), target_mean=50.0, target_scale=20.0).eval()
    with torch.no_grad():
        r.head.weight.normal_()
        r.head.bias.fill_(0.5)
    f = r.encoder(x)
    expected = (f @ r.head.weight.T).squeeze(1) + 0.5
    torch.testing.assert_close(r(x), expected * 20.0 + 50.0)
    torch.testing.assert_close(r.embed(x), f)
    torch.testing.assert_close(r.embed(x, layer="encoder"), f)
    with pytest.raises(ValueError, match="layer"):
        r.embed(x, layer="projection")


def test_regression_buffers_in_state_dict_and_follow_dtype():
    r = RegressionModel(resnet3d(10, widths=NARROW), target_mean=40.0, target_scale=10.0)
    state = r.state_dict()
    assert float(state["target_mean"]) == 40.0 and float(state["target_scale"]) == 10.0
    assert "target_mean" not in dict(r.named_parameters())
    r2 = RegressionModel(resnet3d(10, widths=NARROW))
    r2.load_state_dict(state)
    assert float(r2.target_mean) == 40.0
    assert r.double().target_mean.dtype == torch.float64


@pytest.mark.parametrize("kind", ["contrastive", "regression"])
def test_bf16_autocast_channels_last(kind, x):
    m = build_model(kind, depth=10, widths=NARROW, head_dims=(32, 16), target_mean=30.0)
    m = m.to(memory_format=torch.channels_last_3d)
    xc = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(xc)
    assert out.dtype == torch.float32  # upcast before the norm / the age offset
    assert torch.isfinite(out).all()
    out.sum().backward()
    if kind == "contrastive":
        torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_sync_batchnorm_conversion_of_full_model(x):
    m = build_model("contrastive", depth=10, widths=NARROW, head_dims=(32, 16))
    s = nn.SyncBatchNorm.convert_sync_batchnorm(m)
    assert not any(isinstance(mod, nn.BatchNorm3d) for mod in s.modules())
    assert sum(isinstance(mod, nn.SyncBatchNorm) for mod in s.modules()) == 1 + 2 * 4 + 3
    assert s.eval()(x).shape == (3, 16)


def test_build_model_passes_every_option():
    m = build_model("contrastive", depth=34, widths=(4, 8, 12, 16), in_channels=2, norm="group",
                    head_dims=(20, 10), zero_init_residual=True,
                    input_box=[[1, 9], [0, 10], [2, 8]])
    assert m.encoder.input_box == ((1, 9), (0, 10), (2, 8))
    assert isinstance(m, ContrastiveModel) and isinstance(m.encoder, ResNet3d)
    enc = m.encoder
    assert enc.layers == (3, 4, 6, 3) and enc.widths == (4, 8, 12, 16)
    assert enc.in_channels == 2 and enc.norm == "group"
    assert all(not isinstance(mod, nn.BatchNorm3d) for mod in m.modules())
    assert torch.all(enc.layer1[0].bn2.weight == 0)
    assert m.head_dims == (20, 10)
    r = build_model("regression", depth=10, widths=NARROW, norm="instance", target_mean=7.0,
                    target_scale=3.0)
    assert isinstance(r, RegressionModel) and r.encoder.norm == "instance"
    assert float(r.target_mean) == 7.0 and float(r.target_scale) == 3.0


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: build_model("mae"), ValueError, "kind"),
        (lambda: ContrastiveModel(nn.Conv3d(1, 4, 1)), ValueError, "out_features"),
        (lambda: ContrastiveModel("resnet"), TypeError, "encoder"),
        (lambda: ContrastiveModel(resnet3d(10, widths=NARROW), head_dims=()), ValueError, "head_dims"),
        (lambda: ContrastiveModel(resnet3d(10, widths=NARROW), head_dims=(8, 0)), ValueError,
         r"head_dims\[1\]"),
        (lambda: RegressionModel(resnet3d(10, widths=NARROW), target_scale=0.0), ValueError,
         "target_scale"),
        (lambda: RegressionModel(resnet3d(10, widths=NARROW), target_mean=float("nan")),
         ValueError, "target_mean"),
    ],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
