"""The packed volume store: quantisation error bound, bounding box, Cohort contract, files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainkit.cli import main as brainkit_main
from brainkit.data import Cohort, CohortError
from brainkit.data.loaders import decode_batch
from brainkit.data.packed import PACKED_NAME, PackedStore, bounding_box, pack_cohort, quantisation

AFFINE = np.diag([-6.0, 6.0, 6.0, 1.0])
GRID = (9, 11, 8)


def make_table(n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": [f"img-{i}" for i in range(n)], "subject_id": [f"sub-{i}" for i in range(n)],
        "session": 1, "dataset": "toy", "site": ["a", "b"] * (n // 2) + ["a"] * (n % 2),
        "age": np.linspace(20.0, 80.0, n), "sex": "F", "diagnosis": "HC",
        "years_from_baseline": 0.0,
    })


def brain_images(n: int = 6, seed: int = 0, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Grey-matter-like volumes: values in [low, high] inside a per-image ellipsoid that does
    not reach the grid's border, exact zeros outside (so the box is smaller than the grid)."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.arange(s) for s in GRID], indexing="ij")
    out = np.zeros((n, *GRID), dtype=np.float32)
    for i in range(n):
        centre = [s / 2 + rng.uniform(-0.7, 0.7) for s in GRID]
        r = sum(((a - c) / (s / 3.2)) ** 2 for a, c, s in zip(axes, centre, GRID))
        values = rng.uniform(low, high, GRID).astype(np.float32)
        out[i] = np.where(r <= 1.0, values, 0.0)
    return out


def make_cohort(images: np.ndarray) -> Cohort:
    return Cohort(make_table(len(images)), images, AFFINE)


# --------------------------------------------------------------------------- quantisation
def naive_uint8(x: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, float]:
    """The documented code for lo = 0: code = round(x / step), step = hi / 255."""
    step = float(np.float32(hi / 255.0))
    code = np.clip(np.rint(x.astype(np.float64) / step), 0, 255)
    return (code * step).astype(np.float32), step


def test_uint8_round_trip_matches_the_documented_code_and_bound(tmp_path):
    images = brain_images()
    packed = pack_cohort(make_cohort(images), tmp_path / "p")
    store = packed.packed_store
    assert store.dtype == np.uint8 and store.offset == 0.0
    got = packed.images()
    expected, step = naive_uint8(images, 0.0, float(images.max()))
    assert store.scale == step
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    err = np.abs(got.astype(np.float64) - images)
    assert err.max() <= step / 2 * (1 + 1e-5) + 1e-7
    assert err.max() > step / 4, "a quantiser this coarse must show some error (test is live)"
    assert (got[images == 0] == 0).all(), "the background decodes to exactly 0"
    assert (got[images > step / 2 * (1 + 1e-5)] > 0).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lo=st.floats(-5, 0), hi=st.floats(0, 5), seed=st.integers(0, 2**16))
def test_quantisation_bound_for_any_range_containing_zero(lo, hi, seed):
    """Property: for every value in [lo, hi], decode(encode(x)) is within scale / 2, codes
    cover the range, and 0 decodes to exactly 0 (through the same torch decode as training)."""
    scale, offset = quantisation((lo, hi))
    assert scale > 0 and np.float32(scale) == scale and np.float32(offset) == offset
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.uniform(lo, hi, 500), [lo, hi, 0.0]]).astype(np.float32)
    code = np.clip(np.rint((x - np.float32(offset)) / np.float32(scale)), 0, 255)
    raw = torch.from_numpy(code.astype(np.uint8).reshape(-1, 1, 1, 1))
    x_hat = decode_batch(raw, scale=scale, offset=offset, box=((0, 1),) * 3,
                         grid_shape=(1, 1, 1)).numpy().reshape(-1)
    bound = scale / 2 * (1 + 1e-5) + 1e-6 * max(1.0, abs(lo), abs(hi))
    assert np.abs(x_hat.astype(np.float64) - x).max() <= bound
    assert x_hat[-1] == 0.0
    assert offset <= lo + 1e-6 and offset + 255 * scale >= hi - 1e-6


def test_uint8_with_negative_values_and_a_forced_range(tmp_path):
    images = brain_images(low=-0.3, high=0.8, seed=3)
    packed = pack_cohort(make_cohort(images), tmp_path / "auto")
    store = packed.packed_store
    assert store.offset < 0
    got = packed.images()
    assert np.abs(got - images).max() <= store.max_error * (1 + 1e-5) + 1e-7
    assert (got[images == 0] == 0).all(), "the background decodes to exactly 0"
    # A narrower range clips: values above hi come back as (about) hi.
    clipped = pack_cohort(make_cohort(images), tmp_path / "clip", value_range=(-0.5, 0.5))
    top = clipped.images()[images > 0.5]
    assert top.size and np.abs(top - 0.5).max() <= clipped.packed_store.max_error + 1e-6


def test_float16_is_exact_for_representable_values(tmp_path):
    rng = np.random.default_rng(1)
    images = brain_images(seed=1)
    exact = images.astype(np.float16).astype(np.float32)  # representable in float16
    packed = pack_cohort(make_cohort(exact), tmp_path / "exact", "float16")
    assert packed.packed_store.dtype == np.float16
    np.testing.assert_array_equal(packed.images(), exact)
    # Other values are rounded to the nearest float16, as numpy rounds them.
    noisy = images + (images != 0) * rng.uniform(0, 1e-4, images.shape).astype(np.float32)
    got = pack_cohort(make_cohort(noisy), tmp_path / "noisy", "float16").images()
    np.testing.assert_array_equal(got, noisy.astype(np.float16).astype(np.float32))
    assert not np.array_equal(got, noisy)


@pytest.mark.parametrize("dtype, scale, offset", [(np.uint8, 0.0125, -0.25),
                                                   (np.uint8, 1 / 255, 0.0),
                                                   (np.float16, 1.0, 0.0),
                                                   (np.float32, 1.0, 0.0)])
def test_decode_batch_against_numpy(dtype, scale, offset):
    """decode_batch = zeros on the grid, float32(raw) * scale + offset inside the box."""
    rng = np.random.default_rng(7)
    box, grid = ((1, 6), (0, 11), (2, 5)), GRID
    raw = (rng.integers(0, 256, (3, 5, 11, 3)) if dtype == np.uint8
           else rng.normal(size=(3, 5, 11, 3))).astype(dtype)
    expected = np.zeros((3, 1, *grid), dtype=np.float32)
    inside = raw.astype(np.float32)
    if scale != 1.0:
        inside = inside * np.float32(scale)
    if offset != 0.0:
        inside = inside + np.float32(offset)
    expected[:, 0, 1:6, 0:11, 2:5] = inside
    got = decode_batch(torch.from_numpy(raw), scale=scale, offset=offset, box=box,
                       grid_shape=grid)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), expected)
    whole = torch.from_numpy(rng.random((2, *grid), dtype=np.float32))
    same = decode_batch(whole, scale=1.0, offset=0.0, box=tuple((0, n) for n in grid),
                        grid_shape=grid)
    assert same.data_ptr() == whole.data_ptr(), "float32 on the whole grid needs no copy"


# --------------------------------------------------------------------------- bounding box
def naive_box(images: np.ndarray, margin: int):
    coords = np.argwhere((images != 0).any(axis=0))
    return tuple((max(0, int(coords[:, a].min()) - margin),
                  min(n, int(coords[:, a].max()) + 1 + margin))
                 for a, n in enumerate(images.shape[1:]))


@settings(max_examples=40, deadline=None)
@given(points=st.lists(st.tuples(st.integers(0, 2), st.integers(0, GRID[0] - 1),
                                 st.integers(0, GRID[1] - 1), st.integers(0, GRID[2] - 1)),
                       min_size=1, max_size=6),
       margin=st.integers(0, 3))
def test_bounding_box_never_cuts_a_non_zero_voxel(points, margin):
    images = np.zeros((3, *GRID), dtype=np.float32)
    for i, x, y, z in points:
        images[i, x, y, z] = -1.0 if (x + y) % 2 else 0.25
    box = bounding_box(images, margin=margin)
    assert box == naive_box(images, margin)
    inside = np.zeros(GRID, dtype=bool)
    inside[tuple(slice(a, b) for a, b in box)] = True
    assert not (images[:, ~inside] != 0).any()


def test_bounding_box_of_blank_images_and_bad_arguments():
    assert bounding_box(np.zeros((2, 4, 4, 4))) == ((0, 1), (0, 1), (0, 1))
    with pytest.raises(ValueError, match="margin must be an integer >= 0"):
        bounding_box(np.zeros((2, 4, 4, 4)), margin=-1)
    with pytest.raises(ValueError, match=r"shape \(n, X, Y, Z\)"):
        bounding_box(np.zeros((4, 4, 4)))


def test_packed_cohort_is_cropped_and_keeps_the_cohort_contract(tmp_path):
    images = brain_images(n=7, seed=2)
    source = make_cohort(images)
    packed = pack_cohort(source, tmp_path / "p", margin=1)
    store = packed.packed_store
    assert store.box == naive_box(images, 1)
    assert store.data.shape[1:] != GRID and isinstance(store.data, np.memmap)
    assert packed.grid_shape == GRID and len(packed) == 7
    pd.testing.assert_frame_equal(packed.table, source.table)
    np.testing.assert_array_equal(packed.affine, AFFINE)
    # images(): float32, full grid, any order and repeats, equal to the source within error
    idx = [5, 0, 5, 3]
    got = packed.images(idx)
    assert got.dtype == np.float32 and got.shape == (4, *GRID)
    assert np.abs(got - images[idx]).max() <= store.max_error * (1 + 1e-5)
    np.testing.assert_array_equal(packed.images()[idx], got)
    np.testing.assert_array_equal(packed.images(np.arange(7) == 3), got[3:4])
    # raw_batch: the stored boxes, which decode to images()
    raw = packed.raw_batch(idx)
    assert raw.data.dtype == np.uint8 and raw.data.shape == (4, *store.data.shape[1:])
    assert raw.box == store.box and raw.grid_shape == GRID
    np.testing.assert_array_equal(raw.decode("cpu")[:, 0].numpy(), got)
    # a float cohort's raw batch is its float32 images on the whole grid
    plain = source.raw_batch(idx)
    assert plain.box == ((0, 9), (0, 11), (0, 8)) and (plain.scale, plain.offset) == (1.0, 0.0)
    np.testing.assert_array_equal(plain.data, images[idx])
    # subsets stay packed
    sub = packed.subset([4, 1])
    assert sub.packed_store is not None and sub.packed_store.box == store.box
    np.testing.assert_array_equal(sub.images(), packed.images([4, 1]))
    assert source.packed_store is None


def test_save_load_round_trip_of_a_packed_cohort(tmp_path):
    images = brain_images(seed=4)
    packed = pack_cohort(make_cohort(images), tmp_path / "p", "uint8")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "cohort.json", PACKED_NAME, "table.parquet"]
    meta = json.loads((tmp_path / "p" / "cohort.json").read_text())
    assert meta["store"] == "packed" and meta["format_version"] == 2
    assert meta["packed"]["dtype"] == "uint8" and meta["packed"]["margin"] == 2
    # the stored hash equals one recomputed from the data; another quantisation differs
    fresh = Cohort(packed.table, packed.packed_store, packed.affine)
    assert fresh.content_hash == packed.content_hash
    assert packed.content_hash != make_cohort(images).content_hash
    # save to a new place, load back: same bytes, same hash, still packed
    packed.save(tmp_path / "copy")
    again = Cohort.load(tmp_path / "copy")
    assert again.packed_store is not None and again.content_hash == packed.content_hash
    np.testing.assert_array_equal(again.packed_store.data, packed.packed_store.data)
    np.testing.assert_array_equal(again.images(), packed.images())
    in_memory = Cohort.load(tmp_path / "copy", mmap=False)
    assert not isinstance(in_memory.packed_store.data, np.memmap)
    np.testing.assert_array_equal(in_memory.images(), packed.images())
    # saving onto its own directory leaves the store in place
    packed.save(tmp_path / "p")
    np.testing.assert_array_equal(Cohort.load(tmp_path / "p").images(), packed.images())
    # repacking a packed cohort reproduces its codes
    repacked = pack_cohort(packed, tmp_path / "re")
    np.testing.assert_array_equal(repacked.packed_store.data, packed.packed_store.data)


def test_pack_refuses_bad_arguments(tmp_path):
    cohort = make_cohort(brain_images())
    for bad in ("int8", "float32", np.float64, None):
        with pytest.raises(ValueError, match=r"dtype must be one of \('uint8', 'float16'\)"):
            pack_cohort(cohort, tmp_path / "x", bad)
    with pytest.raises(ValueError, match="low <= 0 <= high"):
        pack_cohort(cohort, tmp_path / "x", value_range=(0.1, 1.0))
    with pytest.raises(ValueError, match="value_range applies to dtype='uint8' only"):
        pack_cohort(cohort, tmp_path / "x", "float16", value_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="margin"):
        pack_cohort(cohort, tmp_path / "x", margin=1.5)
    with pytest.raises(CohortError, match="table-only"):
        pack_cohort(Cohort(make_table(6), None, AFFINE), tmp_path / "x")
    with pytest.raises(TypeError, match="brainkit.data.Cohort"):
        pack_cohort(brain_images(), tmp_path / "x")
    big = brain_images() * 1e5
    with pytest.raises(ValueError, match="beyond float16"):
        pack_cohort(make_cohort(big), tmp_path / "x", "float16")
    nan = brain_images()
    nan[4, 4, 5, 4] = np.nan
    with pytest.raises(CohortError, match=r"rows \[4\] \(\['img-4'\]\).*NaN or inf"):
        pack_cohort(Cohort(make_table(6), nan, AFFINE, check_finite=False), tmp_path / "x")
    assert not (tmp_path / "x" / PACKED_NAME).exists()
    # an existing cohort is kept unless overwrite; the source's own directory never
    saved = cohort.save(tmp_path / "saved")
    with pytest.raises(FileExistsError, match="already holds a cohort"):
        pack_cohort(cohort, saved)
    with pytest.raises(ValueError, match="directory of the cohort being packed"):
        pack_cohort(Cohort.load(saved), saved, overwrite=True)
    pack_cohort(cohort, saved, overwrite=True)
    assert Cohort.load(saved).packed_store is not None
    assert not (saved / "images.npy").exists()


def test_load_reports_a_corrupted_store(tmp_path):
    d = tmp_path / "p"
    packed = pack_cohort(make_cohort(brain_images()), d)
    data = np.array(packed.packed_store.data)
    meta_text = (d / "cohort.json").read_text()

    np.save(d / PACKED_NAME, data[:4])
    with pytest.raises(CohortError, match=r"packed.npy: uint8 array of shape \(4, .*expected "
                                          r"uint8 \(6, "):
        Cohort.load(d)
    np.save(d / PACKED_NAME, data.astype(np.float16))
    with pytest.raises(CohortError, match="float16 array.*expected uint8"):
        Cohort.load(d)
    (d / PACKED_NAME).write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CohortError, match="unreadable packed store"):
        Cohort.load(d)
    full = d / "full.npy"
    np.save(full, data)
    (d / PACKED_NAME).write_bytes(full.read_bytes()[:-100])  # truncated
    with pytest.raises(CohortError, match="packed.npy"):
        Cohort.load(d)
    (d / PACKED_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="packed.npy not found"):
        Cohort.load(d)
    np.save(d / PACKED_NAME, data)
    for key, value, message in [("dtype", "int16", "packed dtype must be one of"),
                                ("box", [[0, 99], [0, 3], [0, 3]], "inside the grid"),
                                ("scale", -1.0, "scale must be finite and > 0")]:
        meta = json.loads(meta_text)
        meta["packed"][key] = value
        (d / "cohort.json").write_text(json.dumps(meta))
        with pytest.raises(CohortError, match=message):
            Cohort.load(d)
    meta = json.loads(meta_text)
    meta["format_version"] = 3
    (d / "cohort.json").write_text(json.dumps(meta))
    with pytest.raises(CohortError, match="newer than this brainkit"):
        Cohort.load(d)
    (d / "cohort.json").write_text(meta_text)
    np.testing.assert_array_equal(Cohort.load(d).packed_store.data, data)


def test_store_refuses_inconsistent_parts():
    data = np.zeros((2, 3, 3, 3), dtype=np.uint8)
    with pytest.raises(CohortError, match="dtype must be one of"):
        PackedStore(data.astype(np.float32), grid_shape=(4, 4, 4), box=((0, 3),) * 3)
    with pytest.raises(CohortError, match=r"box .* has shape \(2, 3, 3\)"):
        PackedStore(data, grid_shape=(4, 4, 4), box=((0, 2), (0, 3), (0, 3)))
    with pytest.raises(CohortError, match="float16 store has scale 1"):
        PackedStore(data.astype(np.float16), grid_shape=(4, 4, 4), box=((0, 3),) * 3,
                    scale=0.5)
    with pytest.raises(CohortError, match="packed store holds 2 volumes but the table has 6"):
        Cohort(make_table(6), PackedStore(data, grid_shape=(4, 4, 4), box=((1, 4),) * 3),
               AFFINE)
    with pytest.raises(ValueError, match=r"raw must have shape \(n, 3, 3, 3\)"):
        decode_batch(torch.zeros(2, 3, 3, 2), scale=1.0, offset=0.0, box=((0, 3),) * 3,
                     grid_shape=(4, 4, 4))


def test_cli_pack(tmp_path, capsys):
    images = brain_images(seed=5)
    make_cohort(images).save(tmp_path / "c")
    code = brainkit_main(["data", "pack", str(tmp_path / "c"), "--out", str(tmp_path / "p"),
                          "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "uint8" in out and "error <=" in out
    packed = Cohort.load(tmp_path / "p")
    assert np.abs(packed.images() - images).max() <= packed.packed_store.max_error * (1 + 1e-5)
    code = brainkit_main(["data", "pack", str(tmp_path / "c"), "--out", str(tmp_path / "p"),
                          "--dtype", "float16", "--no-progress"])
    assert code == 2 and "already holds a cohort" in capsys.readouterr().err
    code = brainkit_main(["data", "pack", str(tmp_path / "c"), "--out", str(tmp_path / "p"),
                          "--dtype", "float16", "--margin", "0", "--overwrite",
                          "--no-progress"])
    assert code == 0
    store = Cohort.load(tmp_path / "p").packed_store
    assert store.dtype == np.float16 and store.box == naive_box(images, 0)
    with pytest.raises(SystemExit):
        brainkit_main(["data", "pack", str(tmp_path / "c"), "--out", str(tmp_path / "q"),
                       "--dtype", "int8"])


def test_a_packed_cohort_edited_after_saving_is_refused(tmp_path):
    make_cohort(brain_images(seed=6)).save(tmp_path / "c")
    pack_cohort(Cohort.load(tmp_path / "c"), tmp_path / "p")
    arr = np.load(tmp_path / "p" / "packed.npy", mmap_mode="r+")
    arr[0, 1, 1, 1] = 255 - arr[0, 1, 1, 1]
    arr.flush()
    del arr
    with pytest.raises(CohortError, match=r"content changed after the cohort was saved .*"
                                          r"\(changed: packed.npy\)"):
        Cohort.load(tmp_path / "p")


def test_a_second_pack_into_a_folder_in_use_is_refused(tmp_path):
    from brainkit._util import FolderLock
    from brainkit.errors import FolderLockedError

    make_cohort(brain_images(seed=7)).save(tmp_path / "c")
    with FolderLock(tmp_path / "p", what="data pack", remove=True):
        with pytest.raises(FolderLockedError, match="in use by another data pack"):
            pack_cohort(Cohort.load(tmp_path / "c"), tmp_path / "p")
    assert len(pack_cohort(Cohort.load(tmp_path / "c"), tmp_path / "p")) > 0
