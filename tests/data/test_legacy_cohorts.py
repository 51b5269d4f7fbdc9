"""Cohorts written by brainkit before the image-source redesign still load, hash and decode
the same.

``tests/data/legacy_cohorts/`` holds five cohorts saved at commit cc7f5d9 (main before issue
14's data-layer change), from the inputs below: float32 and float64 images, a table-only
cohort, and the float32 images packed to uint8 (``margin=1``) and to float16 (``margin=0``).
The hashes were printed by that code; a change to how a cohort is hashed, saved or decoded
shows here as a mismatch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainkit.data import Cohort, PackedStore, concat

LEGACY = Path(__file__).parent / "legacy_cohorts"
AFFINE = np.diag([-6.0, 6.0, 6.0, 1.0])
GRID = (7, 8, 6)

#: Content hashes computed at cc7f5d9.
HASHES = {
    "float32": "b973fe355ff28ade7439efd11ba0c5d01639041a68bb8fb3a075d57e15a02805",
    "float64": "ea81f39fd6a41080e16a66500ff3bdb502ee056ded67e77a6542772bdaf27fe3",
    "table_only": "4e382a94bacbf272fbeb7d2ffb4d2a332a32782a30a7fc6df879eff9cef5cccb",
    "uint8": "ba1d6ef710da05092185362013a97cf37c0381751b804f37645657afc9ea6943",
    "float16": "37215253a07234056d8b55d0c32769bd91b4b5b9d686bd82797710474547ad94",
    "float32_subset_3_0": "a973af7c93e7321a1804bb530835f9ec24345a5e66a96a8462a45711b6a85504",
    "uint8_subset_3_0": "a10bb4aff7c55d35f1bc4b1f84922ef16c63a274d3d1b760c10ed13a53790b7e",
    "float32_concat": "0e63083245515bd7f55c222175ef5a63ba5cea2606043cdfaa3b58a4b2a96053",
}
#: SHA-256 of ``Cohort.load(folder).images([3, 0, 1, 2]).tobytes()`` at cc7f5d9.
DECODED = {
    "uint8": "fc36d808f6acc9645cb32a4f79ed9c7dbc4255b31e04d7e649241ac8695581f4",
    "float16": "13435732de6ec018ca269bc16c9b3e61628b5e9e93348ed03d56936d95abd614",
}
DATA_FILE = {"float32": "images.npy", "float64": "images.npy", "table_only": None,
             "uint8": "packed.npy", "float16": "packed.npy"}


def legacy_table(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": [f"img-{i}" for i in range(n)],
        "subject_id": [f"sub-{i // 2}" for i in range(n)],
        "session": [i % 2 + 1 for i in range(n)],
        "dataset": "legacy", "site": ["a", "b"] * (n // 2),
        "age": np.linspace(21.5, 77.25, n), "sex": ["F", "M"] * (n // 2),
        "diagnosis": ["HC", "AD"] * (n // 2),
        "years_from_baseline": [float(i % 2) * 1.5 for i in range(n)],
        "tiv": np.linspace(1400.0, 1600.0, n),
    })


def legacy_images(n: int = 4, dtype=np.float32) -> np.ndarray:
    """Values in [-0.25, 1] inside a box that misses the grid's border, zeros outside."""
    rng = np.random.default_rng(14)
    out = np.zeros((n, *GRID), dtype=np.float64)
    out[:, 2:5, 2:6, 2:4] = rng.uniform(-0.25, 1.0, (n, 3, 4, 2))
    out[0, 3, 3, 2] = 0.0
    return out.astype(dtype)


def _copy(name: str, tmp_path: Path) -> Path:
    """A copy of a legacy cohort (its files get new modification times, as after a copy)."""
    return Path(shutil.copytree(LEGACY / name, tmp_path / name))


@pytest.mark.parametrize("name", list(DATA_FILE))
def test_a_legacy_cohort_loads_and_hashes_the_same(name, tmp_path):
    d = _copy(name, tmp_path)
    assert json.loads((d / "cohort.json").read_text())["content_hash"] == HASHES[name]
    cohort = Cohort.load(d)  # new times: the fast check re-hashes the bytes
    assert cohort.content_hash == HASHES[name]
    assert cohort.verify() == HASHES[name]
    assert Cohort.load(d, verify="full").content_hash == HASHES[name]
    pd.testing.assert_frame_equal(cohort.table, Cohort(legacy_table(), None, AFFINE).table)
    if name in DECODED:
        got = cohort.images([3, 0, 1, 2])
        assert hashlib.sha256(got.tobytes()).hexdigest() == DECODED[name]
        assert cohort.packed_store is not None
    elif name != "table_only":
        np.testing.assert_array_equal(cohort.images(), legacy_images().astype(np.float32))


@pytest.mark.parametrize("name", list(DATA_FILE))
def test_a_legacy_cohort_saved_again_is_byte_identical(name, tmp_path):
    """Saving a loaded legacy cohort writes the same data file and the same sidecar (but for
    the files' sizes and times)."""
    cohort = Cohort.load(_copy(name, tmp_path))
    again = cohort.save(tmp_path / "again")
    old = json.loads((LEGACY / name / "cohort.json").read_text())
    new = json.loads((again / "cohort.json").read_text())
    assert list(new) == list(old)
    assert {k: v for k, v in new.items() if k != "files"} == \
        {k: v for k, v in old.items() if k != "files"}
    assert sorted(new["files"]) == sorted(old["files"])
    if DATA_FILE[name] is not None:
        assert (again / DATA_FILE[name]).read_bytes() == \
            (LEGACY / name / DATA_FILE[name]).read_bytes()


def test_cohorts_built_in_memory_hash_as_before(tmp_path):
    f32 = Cohort(legacy_table(), legacy_images(), AFFINE)
    f64 = Cohort(legacy_table(), legacy_images(dtype=np.float64), AFFINE)
    assert f32.content_hash == HASHES["float32"]
    assert f64.content_hash == HASHES["float64"]
    assert Cohort(legacy_table(), None, AFFINE).content_hash == HASHES["table_only"]
    assert f32.subset([3, 0]).content_hash == HASHES["float32_subset_3_0"]
    assert f64.subset([3, 0]).content_hash == HASHES["float32_subset_3_0"], \
        "a subset holds float32 images"
    other = legacy_table()
    other["image_id"] = other["image_id"] + "-b"
    both = concat([f32, Cohort(other, legacy_images()[::-1].copy(), AFFINE)])
    assert both.content_hash == HASHES["float32_concat"]
    # a packed store built in memory from the legacy bytes hashes like the saved cohort
    u8 = Cohort.load(_copy("uint8", tmp_path))
    s = u8.packed_store
    described = s.descriptor()
    store = PackedStore(np.array(s.data), grid_shape=s.grid_shape, box=s.box, scale=s.scale,
                        offset=s.offset, value_range=described["value_range"],
                        margin=described["margin"])
    assert Cohort(u8.table, store, AFFINE).content_hash == HASHES["uint8"]
    assert u8.subset([3, 0]).content_hash == HASHES["uint8_subset_3_0"]
