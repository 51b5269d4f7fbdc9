"""Batched augmentations: replay, determinism, and naive per-sample references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from brainkit.data.augment import (
    AUGMENTATIONS,
    RELEASED_CROP_FRACTION,
    RELEASED_CUTOUT_FRACTION,
    Compose,
    Cutout,
    GaussianBlur,
    GaussianNoise,
    IntensityScale,
    RandomCropPad,
    RandomFlip,
    augmentation,
)

SHAPE = (5, 2, 13, 17, 11)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def x():
    return torch.rand(*SHAPE, generator=gen(123)) + 0.5  # strictly positive: zeros are ours


def make_all():
    """One instance of each transform, randomised enough that two seeds differ."""
    return {
        "crop": RandomCropPad(0.7),
        "cutout": Cutout((0.4, 0.3, 0.5), p=1.0),
        "flip": RandomFlip(axes=(0, 1, 2)),
        "noise": GaussianNoise((0.05, 0.2)),
        "blur": GaussianBlur((0.5, 1.5)),
        "scale": IntensityScale((0.5, 1.5)),
        "compose": Compose([Cutout(0.3, p=1.0), RandomFlip(), GaussianBlur((0.3, 1.0)),
                            RandomCropPad(0.8)]),
        "released_all": augmentation("all"),
    }


TRANSFORMS = make_all()


# --------------------------------------------------------------------------------------------
# generic properties


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shape_dtype_device_preserved(name, dtype, x):
    xd = x.to(dtype)
    y = TRANSFORMS[name](xd, generator=gen(0))
    assert y.shape == xd.shape and y.dtype == dtype and y.device == xd.device
    assert torch.isfinite(y.float()).all()
    torch.testing.assert_close(xd, x.to(dtype))  # input untouched


@pytest.mark.parametrize("name", TRANSFORMS)
def test_seed_replays_exactly_and_seeds_differ(name, x):
    t = TRANSFORMS[name]
    a = t(x, generator=gen(7))
    b = t(x, generator=gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, t(x, generator=gen(8)))
    # __call__ is apply(sample(...)) with the same generator stream
    params = t.sample(x.shape, generator=gen(7), device=x.device)
    assert torch.equal(t.apply(x, params), a)
    assert torch.equal(t.apply(x, params), t.apply(x, params))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_global_rng_when_no_generator(name, x):
    t = TRANSFORMS[name]
    torch.manual_seed(3)
    a = t(x)
    torch.manual_seed(3)
    assert torch.equal(t(x), a)


@pytest.mark.parametrize("name", ["crop", "cutout", "flip", "blur", "scale"])
def test_samples_are_independent_of_the_batch(name, x):
    """Sample b's output depends only on x[b] and params[b] (sub-batch of params replays)."""
    t = TRANSFORMS[name]
    params = t.sample(x.shape, generator=gen(5))
    full = t.apply(x, params)
    sub = {k: v[1:3] for k, v in params.items()}
    torch.testing.assert_close(t.apply(x[1:3], sub), full[1:3], rtol=0, atol=1e-6)


def test_noise_sub_batch_replays(x):
    t = GaussianNoise((0.1, 0.2))
    params = t.sample(x.shape, generator=gen(5))
    assert len(set(params["seed"].tolist())) == SHAPE[0]
    full = t.apply(x, params)
    assert torch.equal(t.apply(x[2:4], {k: v[2:4] for k, v in params.items()}), full[2:4])


def test_channels_last_layout_kept(x):
    xc = x.contiguous(memory_format=torch.channels_last_3d)
    for t in (RandomCropPad(0.7), RandomFlip((0, 1)), GaussianBlur((0.5, 1.0))):
        y = t(xc, generator=gen(0))
        assert y.is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(y, t(x, generator=gen(0)))


def test_cpu_generator_drives_any_device_argument(x):
    params = RandomCropPad(0.5).sample(x.shape, generator=gen(1), device="cpu")
    assert all(v.device.type == "cpu" for v in params.values())


# --------------------------------------------------------------------------------------------
# naive references, one sample at a time


def naive_crop_pad(volume: np.ndarray, offset, size) -> np.ndarray:
    """Released Crop (slice at offset) then Pad (centred, extra voxel after) for (C, X, Y, Z)."""
    crop = volume[:, offset[0]:offset[0] + size[0], offset[1]:offset[1] + size[1],
                  offset[2]:offset[2] + size[2]]
    pad = [(0, 0)]
    for n, s in zip(volume.shape[1:], size):
        before = (n - s) // 2
        pad.append((before, n - s - before))
    return np.pad(crop, pad)


@pytest.mark.parametrize("fraction", [0.5, (1.0, 0.6, 0.3), RELEASED_CROP_FRACTION, 1.0])
def test_crop_pad_matches_naive(fraction, x):
    t = RandomCropPad(fraction)
    params = t.sample(x.shape, generator=gen(11))
    y = t.apply(x, params).numpy()
    for b in range(SHAPE[0]):
        off, size = params["offset"][b].tolist(), params["size"][b].tolist()
        assert all(0 <= o <= n - s for o, n, s in zip(off, SHAPE[2:], size))
        np.testing.assert_array_equal(y[b], naive_crop_pad(x[b].numpy(), off, size))
        # exactly prod(size) voxels per channel survive (x > 0 everywhere)
        assert (y[b, 0] != 0).sum() == np.prod(size)


def test_crop_pad_per_sample_sizes_match_naive(x):
    t = RandomCropPad(0.5)
    params = {
        "offset": torch.tensor([[0, 0, 0], [3, 5, 1], [1, 2, 3], [0, 0, 0], [6, 8, 2]]),
        "size": torch.tensor([[13, 17, 11], [10, 12, 10], [4, 7, 2], [1, 1, 1], [7, 9, 9]]),
    }
    y = t.apply(x, params).numpy()
    for b in range(SHAPE[0]):
        np.testing.assert_array_equal(
            y[b], naive_crop_pad(x[b].numpy(), params["offset"][b].tolist(), params["size"][b].tolist()))
    np.testing.assert_array_equal(y[0], x[0].numpy())  # full-size box: identity


def test_crop_offsets_cover_the_range():
    t = RandomCropPad((1.0, 0.5, 0.25))
    params = t.sample((4000, 1, 8, 8, 8), generator=gen(0))
    assert params["size"][0].tolist() == [8, 4, 2]
    off = params["offset"]
    assert set(off[:, 0].tolist()) == {0}
    assert set(off[:, 1].tolist()) == set(range(5))
    assert set(off[:, 2].tolist()) == set(range(7))
    counts = np.bincount(off[:, 2].numpy(), minlength=7)
    assert counts.min() > 4000 / 7 * 0.8  # roughly uniform


def test_cutout_zeros_exactly_the_sampled_box(x):
    t = Cutout((0.4, 0.3, 0.5), p=0.5)
    params = t.sample(x.shape, generator=gen(2))
    applied = params["apply"].tolist()
    assert any(applied) and not all(applied)  # this seed exercises both branches
    y = t.apply(x, params)
    for b in range(SHAPE[0]):
        expected = x[b].clone()
        if applied[b]:
            (o0, o1, o2), (s0, s1, s2) = params["offset"][b].tolist(), params["size"][b].tolist()
            assert o0 + s0 <= SHAPE[2] and o1 + s1 <= SHAPE[3] and o2 + s2 <= SHAPE[4]
            expected[:, o0:o0 + s0, o1:o1 + s1, o2:o2 + s2] = 0
            assert (y[b] == 0).sum() == SHAPE[1] * s0 * s1 * s2
        assert torch.equal(y[b], expected)


def test_cutout_probability_and_value():
    shape = (2000, 1, 6, 6, 6)
    params = Cutout(0.5, p=0.3).sample(shape, generator=gen(0))
    assert abs(params["apply"].float().mean().item() - 0.3) < 0.04
    assert not Cutout(0.5, p=0.0).sample(shape, generator=gen(0))["apply"].any()
    t = Cutout(0.5, p=1.0, value=-1.0)
    z = torch.zeros(3, 1, 6, 6, 6)
    assert ((t(z, generator=gen(0)) == -1).sum(dim=(1, 2, 3, 4)) == 27).all()


def test_flip_matches_numpy_and_twice_is_identity(x):
    t = RandomFlip(axes=(0, 1, 2), p=0.5)
    params = t.sample(x.shape, generator=gen(4))
    y = t.apply(x, params)
    for b in range(SHAPE[0]):
        axes = [1 + a for a in range(3) if params["flip"][b, a]]
        np.testing.assert_array_equal(y[b].numpy(), np.flip(x[b].numpy(), axis=axes))
    assert torch.equal(t.apply(y, params), x)


def test_flip_only_listed_axes():
    params = RandomFlip(axes=(1,), p=1.0).sample((6, 1, 4, 4, 4), generator=gen(0))
    assert params["flip"].tolist() == [[False, True, False]] * 6


def test_blur_matches_scipy_per_sample(x):
    t = GaussianBlur((0.0, 2.0))
    params = t.sample(x.shape, generator=gen(9))
    params["sigma"][0] = 0.0  # identity sample
    params["sigma"][1] = torch.tensor([0.4, 1.3, 0.0])  # anisotropic, one axis untouched
    xd = x.double()
    y = t.apply(xd, params).numpy()
    np.testing.assert_array_equal(y[0], xd[0].numpy())
    for b in range(SHAPE[0]):
        for c in range(SHAPE[1]):
            ref = ndimage.gaussian_filter(xd[b, c].numpy(), sigma=params["sigma"][b].tolist(),
                                          mode="nearest", truncate=4.0)
            np.testing.assert_allclose(y[b, c], ref, rtol=1e-10, atol=1e-12)
    y32 = t.apply(x, params).numpy()
    np.testing.assert_allclose(y32, y, rtol=1e-5, atol=1e-6)


def test_blur_keeps_a_constant_volume_and_smooths():
    t = GaussianBlur((0.5, 3.0))
    const = torch.full((3, 1, 9, 10, 11), 2.5)
    torch.testing.assert_close(t(const, generator=gen(0)), const)
    noise = torch.randn(3, 1, 16, 16, 16, generator=gen(1))
    smooth = GaussianBlur(2.0)(noise, generator=gen(0))
    assert smooth.std() < 0.3 * noise.std()
    torch.testing.assert_close(smooth.mean(), noise.mean(), atol=0.02, rtol=0)


def test_noise_statistics(x):
    t = GaussianNoise((0.0, 0.3))
    big = torch.zeros(6, 1, 20, 20, 20)
    params = t.sample(big.shape, generator=gen(3))
    y = t.apply(big, params)
    torch.testing.assert_close(y.std(dim=(1, 2, 3, 4)), params["std"], rtol=0.06, atol=1e-3)
    torch.testing.assert_close(y.mean(dim=(1, 2, 3, 4)), torch.zeros(6),
                               atol=4 * 0.3 / 20 ** 1.5, rtol=0)
    zero = {"std": torch.zeros(SHAPE[0]), "seed": torch.arange(SHAPE[0])}
    assert torch.equal(t.apply(x, zero), x)


def test_intensity_scale_multiplies(x):
    t = IntensityScale((0.5, 2.0), p=0.5)
    params = t.sample(x.shape, generator=gen(6))
    f = params["factor"]
    assert ((f >= 0.5) & (f <= 2.0)).all() and (f == 1).any()
    torch.testing.assert_close(t.apply(x, params), x * f.view(-1, 1, 1, 1, 1), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# the released settings


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_every_released_name_builds_and_keeps_the_grid(name, x):
    aug = augmentation(name)
    assert isinstance(aug, Compose)
    y = aug(x, generator=gen(0))
    assert y.shape == x.shape and y.dtype == x.dtype


def test_none_is_identity(x):
    aug = augmentation("none")
    assert aug.transforms == [] and aug.sample(x.shape, generator=gen(0)) == []
    assert torch.equal(aug(x, generator=gen(0)), x)


def test_released_sizes_on_the_openbhb_and_coarse_grids():
    crop = augmentation("crop").sample((2, 1, 121, 145, 121), generator=gen(0))[0]
    assert crop["size"].tolist() == [[121, 128, 121]] * 2
    assert crop["offset"][:, [0, 2]].eq(0).all() and crop["offset"][:, 1].le(17).all()
    cut = augmentation("cutout").sample((2, 1, 121, 145, 121), generator=gen(0))[0]
    assert cut["size"].tolist() == [[32, 32, 32]] * 2
    # 6 mm grid: the same fractions of each axis
    crop6 = augmentation("crop").sample((1, 1, 31, 37, 31), generator=gen(0))[0]
    assert crop6["size"].tolist() == [[31, round(37 * 128 / 145), 31]]
    cut6 = augmentation("cutout").sample((1, 1, 31, 37, 31), generator=gen(0))[0]
    assert cut6["size"].tolist() == [[8, 8, 8]]
    assert RELEASED_CUTOUT_FRACTION == (32 / 121, 32 / 145, 32 / 121)


def test_released_compositions(x):
    assert [type(t) for t in augmentation("crop").transforms] == [RandomCropPad]
    (cut,) = augmentation("cutout").transforms
    assert isinstance(cut, Cutout) and cut.p == 0.5 and cut.value == 0.0
    cut_all, crop_all = augmentation("all").transforms
    assert isinstance(cut_all, Cutout) and isinstance(crop_all, RandomCropPad)
    params = augmentation("all").sample(x.shape, generator=gen(1))
    assert len(params) == 2
    manual = crop_all.apply(cut_all.apply(x, params[0]), params[1])
    assert torch.equal(augmentation("all").apply(x, params), manual)


# --------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: augmentation("strong"), ValueError, "augmentation name"),
        (lambda: RandomCropPad(0.0), ValueError, "size"),
        (lambda: RandomCropPad((0.5, 0.5)), ValueError, "size"),
        (lambda: Cutout(0.5, p=1.5), ValueError, "p must"),
        (lambda: RandomFlip(axes=(3,)), ValueError, "axes"),
        (lambda: GaussianNoise((0.2, 0.1)), ValueError, "std"),
        (lambda: GaussianBlur(-1.0), ValueError, "sigma"),
        (lambda: GaussianBlur(1.0, truncate=0), ValueError, "truncate"),
        (lambda: IntensityScale((-1.0, 1.0)), ValueError, "scale"),
        (lambda: Compose([lambda x: x]), TypeError, r"transforms\[0\]"),
        (lambda: RandomFlip()(torch.rand(2, 4, 4, 4)), ValueError, "shape"),
        (lambda: RandomFlip()(torch.zeros(1, 1, 2, 2, 2, dtype=torch.int64)), TypeError, "floating"),
        (lambda: RandomFlip().sample((2, 1, 4, 4)), ValueError, "shape"),
        (lambda: RandomFlip().apply(torch.rand(3, 1, 4, 4, 4), {"flip": torch.zeros(2, 3, dtype=torch.bool)}),
         ValueError, r"params\['flip'\] must have shape \(3, 3\)"),
        (lambda: Cutout().apply(torch.rand(1, 1, 4, 4, 4), {"offset": torch.zeros(1, 3)}),
         ValueError, "lacks 'size'"),
        (lambda: augmentation("all").apply(torch.rand(1, 1, 4, 4, 4), []), ValueError, "list of 2"),
    ],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------------------------
# GPU (runs only where CUDA is available)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", TRANSFORMS)
def test_cuda_generator_replays_and_stays_on_device(name):
    device = torch.device("cuda")
    xg = torch.rand(*SHAPE, device=device) + 0.5
    t = TRANSFORMS[name]
    g1 = torch.Generator(device=device).manual_seed(0)
    g2 = torch.Generator(device=device).manual_seed(0)
    a = t(xg, generator=g1)
    assert a.device.type == "cuda" and a.shape == xg.shape and a.dtype == xg.dtype
    assert torch.equal(a, t(xg, generator=g2))
    params = t.sample(xg.shape, generator=torch.Generator(device=device).manual_seed(0),
                      device=device)
    cpu_params = ([{k: v.cpu() for k, v in p.items()} for p in params]
                  if isinstance(params, list) else {k: v.cpu() for k, v in params.items()})
    if name != "noise":  # the same seed gives different noise on CPU and CUDA
        torch.testing.assert_close(t.apply(xg.cpu(), cpu_params), a.cpu(), rtol=1e-5, atol=1e-6)
