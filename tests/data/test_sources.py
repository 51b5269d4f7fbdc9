"""The image-source protocol: a Cohort works through it alone; concat keeps packed cohorts
packed or refuses; the host decode equals the device decode bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from brainkit.data import ArraySource, Cohort, CohortError, ImageSource, PackedStore, concat
from brainkit.data.loaders import HostBatches, ResidentBatches, decode_batch, resident_nbytes
from brainkit.data.packed import pack_cohort
from brainkit.data.sources import SOURCES, RawBatch

AFFINE = np.diag([-6.0, 6.0, 6.0, 1.0])
GRID = (6, 7, 5)


def make_table(n: int, prefix: str = "img") -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": [f"{prefix}-{i}" for i in range(n)],
        "subject_id": [f"{prefix}-sub-{i}" for i in range(n)], "session": 1,
        "dataset": "toy", "site": "a", "age": np.linspace(20.0, 80.0, n), "sex": "F",
        "diagnosis": "HC", "years_from_baseline": 0.0,
    })


def make_images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((n, *GRID), dtype=np.float32)
    out[:, 1:5, 2:6, 1:4] = rng.uniform(-0.2, 1.0, (n, 4, 4, 3))
    return out


@pytest.fixture
def packed(tmp_path) -> Cohort:
    return pack_cohort(Cohort(make_table(6), make_images(6), AFFINE), tmp_path / "p", margin=0)


# --------------------------------------------------------------------------- the protocol
def test_sources_registry_and_what_a_cohort_holds(packed):
    assert SOURCES == {"array": ArraySource, "packed": PackedStore}
    with pytest.raises(TypeError):
        ImageSource()  # abstract
    plain = Cohort(make_table(6), make_images(6), AFFINE)
    assert isinstance(plain.source, ArraySource) and plain.packed_store is None
    assert isinstance(packed.source, PackedStore) and packed.packed_store is packed.source
    assert Cohort(make_table(6), None, AFFINE).source is None
    with pytest.raises(TypeError, match="images must be a numpy array"):
        Cohort(make_table(6), [[0.0]], AFFINE)


class ScaledArray(ImageSource):
    """A third source, known only to this test: images stored as float64 times 2."""

    store = "scaled"
    file_name = "scaled.npy"
    format_version = 1
    noun = "the scaled array"

    def __init__(self, doubled):
        self._doubled = doubled

    @property
    def data(self):
        return self._doubled

    @property
    def grid_shape(self):
        return tuple(self._doubled.shape[1:])

    def read(self, positions):
        return (self._doubled[positions] / 2).astype(np.float32)

    def raw_batch(self, positions):
        return RawBatch(self._doubled[positions].astype(np.float32), 0.5, 0.0,
                        tuple((0, n) for n in self.grid_shape), self.grid_shape)

    def take(self, positions):
        return ScaledArray(self._doubled[positions])

    def settings(self):
        return {"store": self.store}

    def _hash_header(self):
        return b"scaled"

    def sidecar(self):
        return {"store": self.store}

    @classmethod
    def load(cls, directory, meta, *, mmap=True):
        return cls(np.load(directory / cls.file_name))

    @classmethod
    def _join(cls, sources):
        return cls(np.concatenate([s.data for s in sources]))


def test_a_cohort_works_with_any_source_through_the_protocol(tmp_path):
    """Cohort, concat and the loaders never ask which source they hold: a new one works."""
    images = make_images(4)
    cohort = Cohort(make_table(4), ScaledArray(images.astype(np.float64) * 2), AFFINE)
    assert cohort.grid_shape == GRID
    np.testing.assert_array_equal(cohort.images([3, 1]), images[[3, 1]])
    np.testing.assert_array_equal(cohort.subset([2, 0]).images(), images[[2, 0]])
    assert isinstance(cohort.subset([1]).source, ScaledArray)
    host, resident = HostBatches(cohort, "cpu"), ResidentBatches(cohort, "cpu")
    assert resident.nbytes == resident_nbytes(cohort) == 4 * images.size
    for load in (host.load, resident.load):
        np.testing.assert_array_equal(load([3, 1])[:, 0].numpy(), images[[3, 1]])
    assert cohort.verify() == cohort.content_hash
    other = Cohort(make_table(4, "b"), ScaledArray(images.astype(np.float64) * 2), AFFINE)
    assert isinstance(concat([cohort, other]).source, ScaledArray)
    with pytest.raises(CohortError, match=r"cohort 0: .*scaled.*; cohort 1: .*array"):
        concat([cohort, Cohort(make_table(4, "b"), images, AFFINE)])
    d = cohort.save(tmp_path / "c")
    assert json.loads((d / "cohort.json").read_text())["store"] == "scaled"
    assert (d / "scaled.npy").is_file()
    with pytest.raises(CohortError, match=r"unknown image store 'scaled' .*\['array', "
                                          r"'packed'\]"):
        Cohort.load(d)


@pytest.mark.parametrize("dtype, scale, offset", [
    (np.uint8, 1 / 255, 0.0), (np.uint8, 0.0048872107, -0.24436054), (np.uint8, 3.7, -11.1),
    (np.uint8, 1e-3, 0.0), (np.float16, 1.0, 0.0)])
def test_the_host_decode_equals_the_device_decode_bit_for_bit(dtype, scale, offset):
    """PackedStore.read (numpy, what Cohort.images gives) and decode_batch (torch, what the
    loaders give on the device) agree exactly, for every code."""
    rng = np.random.default_rng(3)
    box = ((1, 5), (0, 7), (2, 4))
    shape = (64, 4, 7, 2)
    data = np.arange(int(np.prod(shape))).reshape(shape) % 256 if dtype == np.uint8 \
        else rng.normal(0, 3, shape)
    store = PackedStore(data.astype(dtype), grid_shape=GRID, box=box,
                        scale=float(np.float32(scale)), offset=float(np.float32(offset)))
    positions = rng.permutation(64)
    host = store.read(positions)
    device = decode_batch(torch.from_numpy(store.raw(positions)), scale=store.scale,
                          offset=store.offset, box=box, grid_shape=GRID)[:, 0].numpy()
    assert host.dtype == np.float32
    np.testing.assert_array_equal(host.view(np.uint32), device.view(np.uint32))
    np.testing.assert_array_equal(store.raw_batch(positions).decode("cpu")[:, 0].numpy(), host)


# --------------------------------------------------------------------------- concat
def test_concat_keeps_a_packed_cohort_packed(packed):
    parts = [packed.subset([0, 1, 2]), packed.subset([3]), packed.subset([4, 5])]
    joined = concat(parts)
    assert joined.packed_store is not None
    assert joined.packed_store.descriptor() == packed.packed_store.descriptor()
    np.testing.assert_array_equal(joined.packed_store.data, packed.packed_store.data)
    np.testing.assert_array_equal(joined.images(), packed.images())
    assert joined.content_hash == packed.content_hash, "the same content, the same hash"
    plain = Cohort(make_table(6), make_images(6), AFFINE)
    assert concat([plain.subset([0, 1]), plain.subset([2, 3, 4, 5])]).content_hash == \
        plain.content_hash


def test_concat_refuses_packed_cohorts_stored_differently(packed, tmp_path):
    other = pack_cohort(Cohort(make_table(6, "b"), make_images(6, seed=1) * 0.5, AFFINE),
                        tmp_path / "other", margin=0)
    assert other.packed_store.scale != packed.packed_store.scale
    with pytest.raises(CohortError, match=r"cannot concatenate images stored in different ways "
                                          r"\(cohort 0: \{\"store\": \"packed\", .*\"scale\": .*; "
                                          r"cohort 1: .*\)"):
        concat([packed, other])
    f16 = pack_cohort(Cohort(make_table(6, "c"), make_images(6), AFFINE), tmp_path / "f16",
                      "float16", margin=0)
    with pytest.raises(CohortError, match=r"cohort 0, cohort 2: .*uint8.*; cohort 1: .*float16"):
        concat([packed, f16, packed.subset([0])])


def test_concat_refuses_packed_and_float_cohorts_together(packed):
    plain = Cohort(make_table(6, "b"), make_images(6), AFFINE)
    with pytest.raises(CohortError, match=r"cohort 0: \{.*\"store\": \"packed\".*; cohort 1: "
                                          r"\{.*\"store\": \"array\".*decode a packed cohort "
                                          r"with Cohort\(c.table, c.images\(\), c.affine\)"):
        concat([packed, plain])
    # the explicit conversion the message names works
    decoded = Cohort(packed.table, packed.images(), packed.affine)
    both = concat([decoded, plain])
    assert both.packed_store is None and len(both) == 12


def test_concat_of_table_only_cohorts_and_mixtures():
    table_only = Cohort(make_table(3), None, AFFINE)
    other = Cohort(make_table(3, "b"), None, AFFINE)
    assert not concat([table_only, other]).has_images
    with_images = Cohort(make_table(3, "c"), make_images(3), AFFINE)
    for parts, listed in (([table_only, with_images], r"\[0\]"),
                          ([with_images, table_only, other], r"\[1, 2\]")):
        with pytest.raises(CohortError, match=rf"cohorts {listed} are table-only"):
            concat(parts)


def test_saving_onto_its_own_file(tmp_path):
    """A source memory-mapped from the file it is saved to is not rewritten; a writable map
    (which may have been changed through it) is checked for NaN / inf first."""
    d = Cohort(make_table(4), make_images(4), AFFINE).save(tmp_path / "c")
    before = (d / "images.npy").stat().st_mtime_ns
    loaded = Cohort.load(d)
    assert loaded.save(d) == d and (d / "images.npy").stat().st_mtime_ns == before
    assert Cohort.load(d, verify="full").content_hash == loaded.content_hash
    writable = np.load(d / "images.npy", mmap_mode="r+")
    writable[2, 0, 0, 0] = np.nan
    with pytest.raises(CohortError, match=r"images.npy: images \[2\] contain NaN or inf; "
                                          r"refusing to save"):
        Cohort(make_table(4), writable, AFFINE).save(d)
