"""3D ResNet encoders: parameter count, structure walked module by module, options, init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainkit.models import (
    NORMS,
    RESNET_LAYERS,
    BasicBlock,
    BlockConv3d,
    ResNet3d,
    StemConv3d,
    resnet3d,
)

NARROW = (8, 16, 32, 64)
NORM_TYPES = {"batch": nn.BatchNorm3d, "instance": nn.InstanceNorm3d, "group": nn.GroupNorm}
ALL_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def resnet18_count_from_formula(widths, in_channels=1) -> int:
    """Parameters of the paper's ResNet-18 written out from the architecture."""
    total = 7 ** 3 * in_channels * widths[0] + 2 * widths[0]  # stem conv (no bias) + norm
    prev = widths[0]
    for stage, w in enumerate(widths):
        for block in range(2):
            total += 27 * prev * w + 2 * w + 27 * w * w + 2 * w  # two 3x3x3 convs + norms
            strided = stage > 0 and block == 0
            if strided or prev != w:
                total += prev * w + 2 * w  # 1x1x1 shortcut conv + norm
            prev = w
    return total


@pytest.fixture(scope="module")
def resnet18_full():
    torch.manual_seed(0)
    return resnet3d(18)


def test_resnet18_has_the_papers_parameter_count(resnet18_full):
    assert n_params(resnet18_full) == 33_160_000
    assert n_params(resnet18_full) == resnet18_count_from_formula((64, 128, 256, 512))
    assert resnet18_full.out_features == 512


def test_resnet18_full_width_structure(resnet18_full):
    check_structure(resnet18_full, RESNET_LAYERS[18], (64, 128, 256, 512), 1, "batch")


def test_resnet18_init(resnet18_full):
    convs = [m for m in resnet18_full.modules() if isinstance(m, nn.Conv3d)]
    for conv in convs:
        fan_out = conv.out_channels * conv.weight[0, 0].numel()
        expected = (2.0 / fan_out) ** 0.5  # Kaiming normal, fan_out, ReLU gain
        if conv.weight.numel() >= 10_000:  # enough draws for a 5 % check
            assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
        assert conv.bias is None
    for norm in resnet18_full.modules():
        if isinstance(norm, nn.BatchNorm3d):
            assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def check_structure(enc: ResNet3d, layers, widths, in_channels, norm):
    """Walk every module: stage widths, strides, shortcuts and norm kind."""
    expected_norm = NORM_TYPES[norm]
    # Every norm layer anywhere in the encoder is of the requested kind (MONAI #9028).
    norms = [m for m in enc.modules() if isinstance(m, ALL_NORM_TYPES)]
    assert norms, "no norm layer found"
    for m in norms:
        assert type(m) is expected_norm, f"{type(m).__name__} where {norm} was requested"
    n_blocks = sum(layers)
    # stem + 2 per block + 1 per strided shortcut (first block of stages 2..4)
    assert len(norms) == 1 + 2 * n_blocks + 3

    assert enc.conv1.in_channels == in_channels and enc.conv1.out_channels == widths[0]
    assert enc.conv1.kernel_size == (7, 7, 7) and enc.conv1.stride == (2, 2, 2)
    assert enc.conv1.bias is None
    assert isinstance(enc.maxpool, nn.MaxPool3d)
    assert enc.maxpool.kernel_size == 3 and enc.maxpool.stride == 2
    prev = widths[0]
    for s, (stage, n, w) in enumerate(zip((enc.layer1, enc.layer2, enc.layer3, enc.layer4),
                                          layers, widths)):
        blocks = list(stage)
        assert len(blocks) == n
        for b, block in enumerate(blocks):
            assert isinstance(block, BasicBlock)
            stride = 2 if (s > 0 and b == 0) else 1
            assert block.conv1.in_channels == prev and block.conv1.out_channels == w
            assert block.conv1.stride == (stride,) * 3 and block.conv1.kernel_size == (3, 3, 3)
            assert block.conv2.in_channels == w and block.conv2.out_channels == w
            assert block.conv2.stride == (1, 1, 1)
            for nl in (block.bn1, block.bn2):
                assert type(nl) is expected_norm and norm_channels(nl) == w
            if stride != 1 or prev != w:
                conv, nl = block.downsample
                assert conv.kernel_size == (1, 1, 1) and conv.stride == (stride,) * 3
                assert conv.in_channels == prev and conv.out_channels == w and conv.bias is None
                assert type(nl) is expected_norm and norm_channels(nl) == w
            else:
                assert block.downsample is None
            prev = w
    # Every convolution's channels belong to the widths table (or the input).
    for m in enc.modules():
        if isinstance(m, nn.Conv3d):
            assert m.out_channels in widths
            assert m.in_channels in widths or m is enc.conv1
    assert enc.out_features == widths[-1]


def norm_channels(m: nn.Module) -> int:
    return m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("depth", sorted(RESNET_LAYERS))
def test_structure_every_depth_and_norm(depth, norm):
    enc = resnet3d(depth, widths=NARROW, in_channels=2, norm=norm)
    check_structure(enc, RESNET_LAYERS[depth], NARROW, 2, norm)


def test_depth_table_rows():
    assert RESNET_LAYERS == {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


@pytest.mark.parametrize("widths", [(8, 16, 32, 64), (4, 6, 10, 12), (16, 16, 16, 16)])
def test_param_count_formula_narrow(widths):
    enc = resnet3d(18, widths=widths, norm="group")
    assert n_params(enc) == resnet18_count_from_formula(widths)


def test_group_norm_groups():
    enc = resnet3d(10, widths=(8, 48, 64, 96), norm="group")
    groups = {norm_channels(m): m.num_groups for m in enc.modules() if isinstance(m, nn.GroupNorm)}
    assert groups == {8: 8, 48: 16, 64: 32, 96: 32}


def test_instance_norm_is_affine_without_running_stats():
    enc = resnet3d(10, widths=NARROW, norm="instance")
    for m in enc.modules():
        if isinstance(m, nn.InstanceNorm3d):
            assert m.affine and not m.track_running_stats


@pytest.mark.parametrize("norm", NORMS)
def test_forward_shape_and_finite(norm):
    torch.manual_seed(0)
    enc = resnet3d(10, widths=NARROW, norm=norm)
    out = enc(torch.randn(2, 1, 40, 44, 36))
    assert out.shape == (2, 64)
    assert torch.isfinite(out).all()
    assert (out >= 0).all()  # pooled after a ReLU


def test_zero_init_residual_makes_blocks_identity_branches():
    enc = resnet3d(18, widths=NARROW, zero_init_residual=True)
    for m in enc.modules():
        if isinstance(m, BasicBlock):
            assert torch.all(m.bn2.weight == 0)
            assert torch.all(m.bn1.weight == 1)
    enc.eval()
    block = enc.layer1[1]  # identity shortcut: output == relu(input) == input for x >= 0
    x = torch.rand(1, 8, 5, 5, 5)
    torch.testing.assert_close(block(x), x)
    default = resnet3d(18, widths=NARROW)
    assert all(torch.all(m.bn2.weight == 1) for m in default.modules() if isinstance(m, BasicBlock))


def test_channels_last_and_double_match_default():
    torch.manual_seed(0)
    enc = resnet3d(10, widths=NARROW).eval()
    x = torch.randn(2, 1, 33, 35, 31)
    ref = enc(x)
    cl = enc.to(memory_format=torch.channels_last_3d)(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
    out64 = enc.double()(x.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), ref, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_runs():
    torch.manual_seed(0)
    enc = resnet3d(10, widths=NARROW)
    x = torch.randn(2, 1, 33, 35, 31).contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(x)
    assert out.shape == (2, 64) and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_sync_batchnorm_conversion_reaches_every_norm():
    enc = resnet3d(18, widths=NARROW)
    conv = nn.SyncBatchNorm.convert_sync_batchnorm(enc)
    norms = [m for m in conv.modules() if isinstance(m, ALL_NORM_TYPES)]
    assert len(norms) == 1 + 2 * 8 + 3
    assert all(type(m) is nn.SyncBatchNorm for m in norms)
    assert conv.out_features == 64
    conv.eval()  # SyncBatchNorm in eval mode needs no process group
    torch.manual_seed(0)
    x = torch.randn(1, 1, 31, 37, 31)
    torch.testing.assert_close(conv(x), enc.eval()(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 50}, "depth"),
        ({"norm": "layer"}, "norm"),
        ({"widths": (8, 16, 32)}, "widths"),
        ({"widths": (8, 16, 0, 64)}, r"widths\[2\]"),
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": 1.5}, "in_channels"),
        ({"input_box": ((0, 4), (0, 4))}, "input_box"),
        ({"input_box": ((0, 4), (3, 3), (0, 4))}, "input_box"),
        ({"input_box": ((-1, 4), (0, 4), (0, 4))}, "input_box"),
        ({"input_box": ((0, 4.5), (0, 4), (0, 4))}, "input_box"),
        ({"input_box": "brain"}, "resolved on a grid"),
        ({"input_box": 7}, "input_box"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resnet3d(**kwargs)


def test_input_box_is_the_uncropped_model_on_the_cropped_input():
    """A model with ``input_box`` is the same network applied to ``x[..., box]``: same weights
    from the same seed, same outputs (train and eval mode), gradients reach the cropped voxels
    only."""
    box = ((2, 29), (3, 35), (0, 27))
    torch.manual_seed(3)
    cropping = resnet3d(18, widths=NARROW, input_box=[list(p) for p in box])
    torch.manual_seed(3)
    plain = resnet3d(18, widths=NARROW)
    assert cropping.input_box == box and plain.input_box is None
    for a, b in zip(cropping.state_dict().values(), plain.state_dict().values()):
        torch.testing.assert_close(a, b)
    x = torch.randn(3, 1, 31, 37, 31, requires_grad=True)
    inner = x[:, :, 2:29, 3:35, 0:27]
    for mode in ("train", "eval"):
        getattr(cropping, mode)(), getattr(plain, mode)()
        torch.testing.assert_close(cropping(x), plain(inner))
    cropping(x).sum().backward()
    outside = torch.ones_like(x, dtype=torch.bool)
    outside[:, :, 2:29, 3:35, 0:27] = False
    assert x.grad[outside].abs().max() == 0 and x.grad[~outside].abs().max() > 0


def test_input_box_refuses_an_input_that_does_not_reach_it():
    enc = resnet3d(10, widths=NARROW, input_box=((2, 29), (3, 35), (0, 27)))
    with pytest.raises(ValueError, match=r"reaching at least \(29, 35, 27\), got shape "
                                         r"\(1, 1, 28, 37, 31\)"):
        enc(torch.zeros(1, 1, 28, 37, 31))


@pytest.mark.parametrize("shape", [(27, 33, 27), (8, 9, 10), (5, 5, 6)])
@pytest.mark.parametrize("kernel, padding", [(7, 3), (3, 1), (4, 0), (1, 0)])
@pytest.mark.parametrize("in_channels", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_stem_phases_compute_the_strided_convolution(shape, kernel, padding, in_channels,
                                                     channels_last):
    """StemConv3d's CPU form (a stride-1 convolution over the eight voxel phases) against
    conv3d(stride=2) written out by torch, in float64: outputs and both gradients, for odd and
    even sizes and kernels."""
    torch.manual_seed(0)
    stem = StemConv3d(in_channels, 4, kernel_size=kernel, stride=2, padding=padding,
                      bias=True).double()
    x = torch.randn(2, in_channels, *shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    out = stem(x)
    ref = nn.functional.conv3d(x, stem.weight, stem.bias, stride=2, padding=padding)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    g = torch.randn_like(ref)
    got = torch.autograd.grad((out * g).sum(), [x, stem.weight, stem.bias])
    want = torch.autograd.grad((ref * g).sum(), [x, stem.weight, stem.bias])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_stem_falls_back_to_conv3d_outside_its_case():
    """Stride 1 (or dilation, groups): plain Conv3d; the stem of every encoder is a
    StemConv3d holding the paper's parameters."""
    torch.manual_seed(0)
    conv = StemConv3d(1, 4, kernel_size=3, stride=1, padding=1).double()
    x = torch.randn(1, 1, 6, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(conv(x), nn.functional.conv3d(x, conv.weight, conv.bias,
                                                             padding=1))
    enc = resnet3d(18, widths=NARROW)
    assert type(enc.conv1) is StemConv3d and enc.conv1.weight.shape == (8, 1, 7, 7, 7)
    assert set(enc.conv1.state_dict()) == {"weight"}


@pytest.mark.parametrize("shape", [(9, 10, 11), (5, 5, 6), (3, 2, 2), (1, 2, 1)])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (1, 1, 0)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_block_conv_gradients_are_the_convolutions(shape, kernel, stride, padding,
                                                   channels_last):
    """BlockConv3d's CPU backward (the weight gradient as a convolution of the input with the
    output's gradient, or as one matrix product on maps of at most SMALL_MAP voxels) against
    torch's conv3d in float64: outputs and both gradients, both branches, odd and even sizes,
    strides 1 and 2 (9 x 10 x 11 takes the convolution, 3 x 2 x 2 the product)."""
    torch.manual_seed(0)
    conv = BlockConv3d(3, 5, kernel_size=kernel, stride=stride, padding=padding,
                       bias=False).double()
    x = torch.randn(4, 3, *shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        conv = conv.to(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    out = conv(x)
    assert out.grad_fn is not None and "ConvWeightGrad" in type(out.grad_fn).__name__
    ref = nn.functional.conv3d(x, conv.weight, None, stride=stride, padding=padding)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    got = torch.autograd.grad((out * g).sum(), [x, conv.weight])
    want = torch.autograd.grad((ref * g).sum(), [x, conv.weight])
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # the weight-only case (an input that needs no gradient, as a first layer's)
    (only,) = torch.autograd.grad((conv(x.detach()) * g).sum(), [conv.weight])
    torch.testing.assert_close(only, want[1], rtol=0, atol=1e-10)


def test_block_conv_is_conv3d_where_it_does_not_apply():
    """Inference, a bias, or a frozen weight: plain Conv3d; every block and shortcut
    convolution of an encoder is a BlockConv3d with Conv3d's parameters."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6, 7)
    conv = BlockConv3d(3, 4, kernel_size=3, padding=1, bias=False)
    with torch.no_grad():
        assert conv(x).grad_fn is None
    biased = BlockConv3d(3, 4, kernel_size=3, padding=1, bias=True)
    assert "ConvWeightGrad" not in type(biased(x).grad_fn).__name__
    conv.weight.requires_grad_(False)
    assert conv(x).grad_fn is None
    enc = resnet3d(18, widths=NARROW)
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv3d)]
    assert all(type(m) is BlockConv3d for m in convs if m is not enc.conv1)
    assert len(convs) == 1 + 16 + 3
    assert all(set(m.state_dict()) == {"weight"} for m in convs)
