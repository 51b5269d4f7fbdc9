"""The embedded default: synthetic grey-matter cohorts with known ground truth.

Every image is a grey-matter-like map on the MNI grid, made from the MNI152 grey-matter
template that ships inside nilearn (no download), so the whole pipeline runs offline. The
generative model, per image:

.. code-block:: text

    log GM(x) = log T(x)                                  template on the grid
              - sum_r W_r(x) * load_r(bio_age)            regional ageing (tissue loss)
              - W_mtl(x) * severity                       disease (pMCI, AD)
              + anatomy_subject(x) + scale_subject        age-independent anatomy
    u(x)      = s_subject(x)                              individual shape (mm)
              + (vent(bio_age) + 10 severity) V(x)        ventricles widen
              + cortex(bio_age) C(x)                      the cortex recedes, sulci widen
              + 35 severity M(x)                          the medial temporal lobe shrinks
    image(x)  = clip(gain_site * (G_site * GM(. - u))(x) * bias_site(x) + offset_site
                     + noise_site * e(x), 0, 1) * mask(x)

- ``W_r`` are smooth regional weight maps (global, frontal, lateral temporal, parietal,
  periventricular) and ``load_r(a) = -dev_r max(20 - a, 0) / 14 + lin_r (a - 20) / 60
  + acc_r (max(a - 60, 0) / 30)^2``: loss that differs by region, is steeper in childhood and
  accelerates after 60.
- ``bio_age = age + true_gap``; images are made from ``bio_age``, never from ``age``.
  ``true_gap``: HC ~ N(0, 2.5) per subject (narrower in children), sMCI ~ N(1, 2.5) flat,
  pMCI ~ N(3, 2.5) + 1.5 / year, AD ~ N(6, 2.5) + 2 / year of follow-up.
- ``W_mtl`` is a medial-temporal map around MNI (+-26, -20, -16) mm; pMCI and AD lose extra
  grey matter there, more at every visit.
- Ageing is also shape, as in real brains (a linear model on voxels captures it poorly):
  each image is warped by a smooth displacement ``u`` (mm). ``V`` pushes tissue away from the
  lateral ventricles, ``C`` pulls the brain's surface inwards (normalised gradients of the
  smoothed ventricle and brain masks of nilearn's MNI152 templates), ``M`` contracts the
  medial temporal lobe; ``vent(a)`` and ``cortex(a)`` grow with age and accelerate after 60
  (4.0 and 1.9 mm at 80), and disease acts through the same fields. ``s_subject`` is a
  smooth random field (3 mm per axis, mean translation included), fixed over visits: the
  individual shape that registration to MNI leaves.
- ``anatomy_subject`` is a smooth random field (a low-frequency cosine basis in MNI mm, so
  the same subject looks the same on every grid; log-sd 0.15 per voxel), constant over a
  subject's visits; ``scale_subject`` follows TIV plus a global N(0, 0.05) term.
- Sites differ by gain, offset, Gaussian smoothness ``G_site`` (FWHM in mm), noise level and a
  low-frequency multiplicative bias field; OpenBHB-like sites also differ in age range (the real
  per-site summaries ship in ``_synthetic_presets.json``).

Randomness comes from ``numpy.random.SeedSequence(seed, spawn_key=(preset, stream, index))``:
each site, subject and image has its own stream, so ``make_cohort(p, n_subjects=100)`` is the
first 100 subjects of ``make_cohort(p, n_subjects=200)``.

Examples
--------
>>> from brainkit.data.synthetic import make_cohort
>>> cohort = make_cohort("openbhb", n_subjects=50, grid_mm=6)
>>> cohort.grid_shape
(31, 37, 31)
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from types import MappingProxyType

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter
from scipy.special import ndtr, ndtri

from .cohort import Cohort
from .grid import resample_kwargs

__all__ = [
    "PRESETS",
    "GRIDS",
    "REGIONS",
    "template",
    "brain_mask",
    "region_map",
    "make_cohort",
    "make_merged",
]

#: Preset names (each mimics one dataset of the paper's Table 1).
PRESETS: tuple[str, ...] = ("openbhb", "adni", "icbm", "oasis3")


def _grid_affine(mm: float) -> np.ndarray:
    # The OpenBHB / CAT12 convention: x flipped, first voxel at (90, -126, -72) mm.
    affine = np.array([[-mm, 0, 0, 90.0], [0, mm, 0, -126.0], [0, 0, mm, -72.0],
                       [0, 0, 0, 1.0]])
    affine.flags.writeable = False
    return affine


#: Grid spacing in mm -> (shape, affine); all three cover the same MNI box.
GRIDS: Mapping[float, tuple[tuple[int, int, int], np.ndarray]] = MappingProxyType({
    1.5: ((121, 145, 121), _grid_affine(1.5)),
    3.0: ((61, 73, 61), _grid_affine(3.0)),
    6.0: ((31, 37, 31), _grid_affine(6.0)),
})

# Regional ageing: MNI centres (mirrored across hemispheres), Gaussian width (mm), and the
# load coefficients of
#     load(a) = -dev max(20 - a, 0) / 14 + lin (a - 20) / 60 + acc (max(a - 60, 0) / 30)^2
# (log grey-matter loss): steeper loss in childhood and adolescence (dev, fronto-parietal
# pruning), slow adult decline (lin), acceleration after 60 (acc). At 80 years, frontal and
# lateral temporal grey matter is about 30% below the 20-year level, 40% at 88.
_AGEING: dict[str, tuple[tuple[float, float, float] | None, float, float, float, float]] = {
    "global": (None, 0.0, 0.04, 0.09, 0.06),
    "frontal": ((28.0, 42.0, 18.0), 22.0, 0.08, 0.18, 0.15),
    "temporal": ((54.0, -18.0, -12.0), 16.0, 0.03, 0.08, 0.30),
    "parietal": ((36.0, -58.0, 44.0), 20.0, 0.08, 0.14, 0.14),
    "periventricular": ((14.0, -4.0, 12.0), 12.0, 0.0, 0.05, 0.40),
}
# Disease: medial temporal lobe (hippocampus / entorhinal), MNI (+-26, -20, -16) mm.
_MTL = ((26.0, -20.0, -16.0), 9.0)

# Ageing as shape, on top of the grey-matter loss: every image is the grey-matter map above
# resampled as out(x) = in(x - u(x)), with a displacement u in MNI mm (see _shape_fields):
#   u = s_subject(x)                        individual shape, constant over visits
#     + vent(a) V(x) + cortex(a) C(x)       ventricles widen, the cortex recedes (sulci widen)
#     + severity * (mtl_mm M(x) + vent_mm V(x))   disease: the same mechanism, faster
# V pushes tissue away from the lateral ventricles and C pulls the brain's surface inwards
# (both the normalised gradient of a smoothed mask, from nilearn's MNI152 templates: peak 1,
# zero far from the structure); M shrinks the medial temporal lobe. Loads in mm of peak
# displacement, as functions of the biological age a: lin (a - 20) / 60 + acc (max(a - 60, 0)
# / 30)^2, zero below 20. At 80 the ventricle walls have moved about 4.0 mm and the cortex
# about 1.9 mm; at 90, 6.8 and 3.2.
_SHAPE_SMOOTH_MM = {"ventricles": 4.0, "cortex": 5.0}
_SHAPE_LOADS = {"ventricles": (2.0, 4.5), "cortex": (1.0, 2.0)}
_SEVERITY_MM = {"medial_temporal": 35.0, "ventricles": 10.0}   # mm per unit of severity
# Individual shape: a smooth displacement field per axis (cosine basis of _SHAPE_K terms,
# mean translation included), _SHAPE_SD_MM per axis: what registration to MNI leaves.
_SHAPE_K = 4
_SHAPE_SD_MM = 3.0

#: Names of the spatial weight maps (:func:`region_map`).
REGIONS: tuple[str, ...] = tuple(_AGEING) + ("medial_temporal",)

# Gap model per diagnosis: (baseline mean, baseline sd, slope per year, slope sd) in years,
# and the medial-temporal severity (baseline, per year) as a log grey-matter loss.
_GAP = {"HC": (0.0, 2.5, 0.0, 0.0), "sMCI": (1.0, 2.5, 0.0, 0.0),
        "pMCI": (3.0, 2.5, 1.5, 0.3), "AD": (6.0, 2.5, 2.0, 0.3)}
_SEVERITY = {"HC": (0.0, 0.0), "sMCI": (0.0, 0.0), "pMCI": (0.05, 0.03), "AD": (0.12, 0.035)}
_SEVERITY_SD = 0.3          # per-subject log-normal spread of the severity
_CHILD_GAP_AGE = 18.0       # the HC gap sd scales with age below this (min 40%)

# Individual anatomy: cosine basis of _ANAT_K terms per axis over the MNI box below, no
# constant term, spectrum (1 + |k|^2)^-1.5 (a few large smooth fields dominate), unit
# variance, times _ANAT_SD (log grey matter).
_ANAT_K = 8
_ANAT_SD = 0.10
_GLOBAL_SD = 0.05          # per-subject global grey-matter scale (log), on top of TIV
_BIAS_K = 3
_TIV_EXPONENT = 0.3          # grey matter scales as (tiv / 1450 ml) ** 0.3
_TIV_REF = 1450.0
_BOX = ((-93.0, 93.0), (-129.0, 93.0), (-75.0, 111.0))   # MNI mm, the 6 mm grid's extent

# Independent random streams: SeedSequence(seed, spawn_key=(preset, stream, index, ...)).
_PRESET_KEY = {"openbhb": 1, "adni": 2, "icbm": 3, "oasis3": 4}
_LAYOUT, _SITE, _SUBJECT, _IMAGE, _SHAPE = 0, 1, 2, 3, 4
_WEYL = (math.sqrt(5.0) - 1.0) / 2.0   # golden-ratio sequence for stable proportions


# ---------------------------------------------------------------------------- grids

def _grid_key(grid_mm) -> float:
    if isinstance(grid_mm, bool) or not isinstance(grid_mm, numbers.Real):
        raise TypeError(f"grid_mm must be a number (one of {_grid_names()}), "
                        f"got {type(grid_mm).__name__}")
    key = float(grid_mm)
    if key not in GRIDS:
        raise ValueError(f"grid_mm must be one of {_grid_names()} (mm), got {grid_mm!r}")
    return key


def _grid_names() -> str:
    return ", ".join(f"{k:g}" for k in GRIDS)


@lru_cache(maxsize=None)
def _template(key: float) -> np.ndarray:
    from nilearn.datasets import load_mni152_gm_template
    from nilearn.image import resample_img, smooth_img

    shape, affine = GRIDS[key]
    img = load_mni152_gm_template(resolution=1)
    if key > 1.5:
        # Anti-aliasing before subsampling the 1 mm template.
        img = smooth_img(img, fwhm=key)
    out = resample_img(img, target_affine=np.array(affine), target_shape=shape,
                       interpolation="continuous", **resample_kwargs())
    data = np.clip(np.asarray(out.get_fdata(), dtype=np.float32), 0.0, 1.0)
    data *= _mask(key)
    data.flags.writeable = False
    return data


@lru_cache(maxsize=None)
def _mask(key: float) -> np.ndarray:
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    shape, affine = GRIDS[key]
    img = load_mni152_brain_mask(resolution=1)
    with warnings.catch_warnings():
        # Linear interpolation of the binary mask, thresholded at 0.5 below, is intended.
        warnings.filterwarnings("ignore", message="Resampling binary images")
        out = resample_img(img, target_affine=np.array(affine), target_shape=shape,
                           interpolation="linear", **resample_kwargs())
    data = np.asarray(out.get_fdata()) > 0.5
    data.flags.writeable = False
    return data


def template(grid_mm: float = 6) -> np.ndarray:
    """The MNI152 grey-matter template (nilearn's bundled copy) on a brainkit grid.

    Resampled with continuous (spline) interpolation, after a Gaussian anti-aliasing filter of
    FWHM ``grid_mm`` for the 3 and 6 mm grids, clipped to [0, 1] and zeroed outside
    :func:`brain_mask`. Cached per grid.

    Parameters
    ----------
    grid_mm : {1.5, 3, 6}
        Voxel size; the shape and affine are ``GRIDS[grid_mm]``.

    Returns
    -------
    numpy.ndarray of shape (X, Y, Z), float32
        Read-only (it is shared by every caller); copy it before modifying.
    """
    return _template(_grid_key(grid_mm))


def brain_mask(grid_mm: float = 6) -> np.ndarray:
    """The MNI152 brain mask (nilearn's bundled copy) on a brainkit grid.

    Parameters
    ----------
    grid_mm : {1.5, 3, 6}

    Returns
    -------
    numpy.ndarray of shape (X, Y, Z), bool
        Read-only. Synthetic images are zero outside it.
    """
    return _mask(_grid_key(grid_mm))


def _world(key: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNI mm coordinate of each voxel along each axis (the affines are diagonal)."""
    shape, affine = GRIDS[key]
    return tuple(affine[a, a] * np.arange(shape[a]) + affine[a, 3] for a in range(3))


@lru_cache(maxsize=None)
def _region(name: str, key: float) -> np.ndarray:
    if name == "medial_temporal":
        centre, width = _MTL
    else:
        centre, width = _AGEING[name][:2]
    shape = GRIDS[key][0]
    if centre is None:
        out = np.ones(shape, dtype=np.float32)
    else:
        x, y, z = _world(key)
        out = np.zeros(shape, dtype=np.float64)
        for sign in (-1.0, 1.0):
            gx = np.exp(-((x - sign * centre[0]) ** 2) / (2 * width ** 2))
            gy = np.exp(-((y - centre[1]) ** 2) / (2 * width ** 2))
            gz = np.exp(-((z - centre[2]) ** 2) / (2 * width ** 2))
            out += gx[:, None, None] * gy[None, :, None] * gz[None, None, :]
        out = (out / out.max()).astype(np.float32)
    out.flags.writeable = False
    return out


def region_map(region: str, grid_mm: float = 6) -> np.ndarray:
    """A spatial weight map of the generative model, in [0, 1].

    Parameters
    ----------
    region : str
        One of :data:`REGIONS`: the ageing regions (``global``, ``frontal``, ``temporal``,
        ``parietal``, ``periventricular``) and the disease region ``medial_temporal``.
    grid_mm : {1.5, 3, 6}

    Returns
    -------
    numpy.ndarray of shape (X, Y, Z), float32
        Read-only; sum of two mirrored Gaussian blobs scaled to a maximum of 1 (all ones for
        ``global``).
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {list(REGIONS)}, got {region!r}")
    return _region(region, _grid_key(grid_mm))


@lru_cache(maxsize=None)
def _cosine_basis(key: float, n_terms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-axis cosine bases ``cos(pi k u)``, u in [0, 1] over the fixed MNI box."""
    out = []
    for coords, (lo, hi) in zip(_world(key), _BOX):
        u = (coords - lo) / (hi - lo)
        basis = np.cos(np.pi * np.arange(n_terms)[:, None] * u[None, :]).astype(np.float32)
        basis.flags.writeable = False
        out.append(basis)
    return tuple(out)


@lru_cache(maxsize=None)
def _spectrum(n_terms: int, include_dc: bool) -> np.ndarray:
    """Coefficient sd for a unit-variance field: ``(1 + |k|^2)^-1.5``, normalised."""
    k = np.arange(n_terms)
    ksq = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    sd = (1.0 + ksq) ** -1.5
    if not include_dc:
        sd[0, 0, 0] = 0.0
    # Mean square of cos(pi k u) over u is 1 for k = 0 and 1/2 otherwise.
    ms = np.where(k == 0, 1.0, 0.5)
    var = np.sum(sd ** 2 * ms[:, None, None] * ms[None, :, None] * ms[None, None, :])
    out = (sd / np.sqrt(var)).astype(np.float32)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=None)
def _mask_gradients(key: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit displacement fields (3, X, Y, Z) of the ventricles (outwards) and the cortex
    (inwards), from nilearn's 1 mm MNI152 templates (bundled: no download).

    The lateral ventricles are the two largest connected pieces of cerebrospinal fluid
    (brain mask minus grey and white matter, away from the brain's edge) off the midline.
    Each mask is smoothed (:data:`_SHAPE_SMOOTH_MM`), its gradient taken in mm, sampled at
    the grid's voxel centres and scaled to a peak magnitude of 1.
    """
    from nilearn.datasets import (
        load_mni152_brain_mask,
        load_mni152_gm_template,
        load_mni152_wm_template,
    )
    from scipy import ndimage

    brain_img = load_mni152_brain_mask(resolution=1)
    brain = np.asarray(brain_img.get_fdata()) > 0.5
    tissue = (np.asarray(load_mni152_gm_template(resolution=1).get_fdata())
              + np.asarray(load_mni152_wm_template(resolution=1).get_fdata()))
    csf = ndimage.binary_erosion(brain, iterations=10) & (tissue < 0.2)
    labels, n = ndimage.label(csf)
    sizes = ndimage.sum(csf, labels, np.arange(1, n + 1))
    inv = np.linalg.inv(brain_img.affine)
    centres = ndimage.center_of_mass(csf, labels, np.arange(1, n + 1))
    lateral = [k + 1 for k in np.argsort(sizes)[::-1]
               if abs((brain_img.affine[:3, :3] @ centres[k] + brain_img.affine[:3, 3])[0]) > 5][:2]
    ventricles = np.isin(labels, lateral)
    shape = GRIDS[key][0]
    world = np.stack(np.meshgrid(*_world(key), indexing="ij")).reshape(3, -1)
    step = 2                                  # smooth on a 2 mm subgrid: 8 times cheaper
    coords = (inv[:3, :3] @ world + inv[:3, 3:]) / step
    out = []
    for mask, sign, name in ((ventricles, -1.0, "ventricles"), (brain, 1.0, "cortex")):
        coarse = mask[::step, ::step, ::step].astype(np.float32)
        phi = ndimage.gaussian_filter(coarse, _SHAPE_SMOOTH_MM[name] / step)
        field = np.stack([ndimage.map_coordinates(g, coords, order=1).reshape(shape)
                          for g in np.gradient(phi)])   # the affine is diagonal
        field *= np.sign(np.diag(brain_img.affine)[:3])[:, None, None, None]
        field *= sign / np.sqrt((field ** 2).sum(axis=0)).max()
        out.append(field.astype(np.float32))
    return tuple(out)


@lru_cache(maxsize=None)
def _shape_fields(key: float) -> np.ndarray:
    """Unit displacement fields (3 fields, 3 axes, X, Y, Z) in mm: V, C, M of the shape model.

    ``V``: away from the lateral ventricles, ``-grad(phi)`` of the smoothed ventricle mask;
    ``C``: into the brain, ``grad(psi)`` of the smoothed brain mask (both scaled to a peak
    of 1, see :func:`_mask_gradients`); ``M``: towards each medial-temporal centre c (the
    region shrinks), ``-(d / w) exp(0.5 - |d|^2 / 2)`` with ``d = (x - c) / w``, peak 1.
    """
    x, y, z = _world(key)
    grid = np.stack(np.meshgrid(x, y, z, indexing="ij")).astype(np.float64)   # (3, X, Y, Z)

    def radial(centre, width, sign):
        out = np.zeros_like(grid)
        for side in (-1.0, 1.0):
            c = np.array([side * centre[0], centre[1], centre[2]])[:, None, None, None]
            d = (grid - c) / width
            out += sign * d * np.exp(-0.5 * np.sum(d ** 2, axis=0) + 0.5)
        return out

    ventricles, cortex = _mask_gradients(key)
    mtl = radial(*_MTL, -1.0)
    out = np.stack([ventricles, cortex, mtl]).astype(np.float32)
    out.flags.writeable = False
    return out


def _shape_loads(bio_age: np.ndarray) -> np.ndarray:
    """(m,) biological ages -> (m, 2) peak displacements (mm) of the ventricles and cortex."""
    a = np.asarray(bio_age, dtype=float)[:, None]
    lin, acc = (np.array([v[k] for v in _SHAPE_LOADS.values()]) for k in (0, 1))
    return (lin * np.maximum(a - 20.0, 0.0) / 60.0
            + acc * (np.maximum(a - 60.0, 0.0) / 30.0) ** 2)


def _warp(vol: np.ndarray, displacement: np.ndarray, key: float) -> np.ndarray:
    """``out(x) = vol(x - u(x))`` for a displacement ``u`` (3, X, Y, Z) in MNI mm.

    Trilinear interpolation (cubic splines cost ten times more), zero outside the grid.
    """
    from scipy.ndimage import map_coordinates

    shape, affine = GRIDS[key]
    coords = np.indices(shape, dtype=np.float32)
    steps = np.array([affine[a, a] for a in range(3)], dtype=np.float32)[:, None, None, None]
    coords -= displacement / steps
    return map_coordinates(vol, coords, order=1, mode="constant", cval=0.0, output=np.float32)


def _field(coefs: np.ndarray, key: float) -> np.ndarray:
    """Smooth fields from cosine coefficients, (m, K, K, K) -> (m, X, Y, Z) float32."""
    bx, by, bz = _cosine_basis(key, coefs.shape[1])
    t = np.tensordot(coefs, bz, axes=([3], [0]))            # (m, K, K, Z)
    t = np.tensordot(t, by, axes=([2], [0]))                # (m, K, Z, Y)
    t = np.tensordot(t, bx, axes=([1], [0]))                # (m, Z, Y, X)
    return np.ascontiguousarray(t.transpose(0, 3, 2, 1))


# ---------------------------------------------------------------------------- presets

@lru_cache(maxsize=None)
def _presets() -> dict:
    text = resources.files("brainkit.data").joinpath("_synthetic_presets.json").read_text()
    return json.loads(text)


def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _truncnorm(u: np.ndarray, mean, sd, lo, hi) -> np.ndarray:
    """Inverse-CDF draw from N(mean, sd) truncated to [lo, hi], from uniforms ``u``."""
    a = ndtr((np.asarray(lo) - mean) / sd)
    b = ndtr((np.asarray(hi) - mean) / sd)
    return mean + sd * ndtri(np.clip(a + u * (b - a), 1e-12, 1 - 1e-12))


def _weyl(seed: int, preset: str, n: int) -> np.ndarray:
    """Low-discrepancy uniforms: any prefix keeps category proportions close to target."""
    start = _stream(seed, _PRESET_KEY[preset], _LAYOUT).random()
    return (start + _WEYL * np.arange(n)) % 1.0


def _site_params(seed: int, preset: str, field_strength: np.ndarray) -> dict:
    """Per-site acquisition effects, one stream per site (stable across n_subjects)."""
    n = len(field_strength)
    draws = np.empty((n, 5))
    bias = np.empty((n, _BIAS_K, _BIAS_K, _BIAS_K), dtype=np.float32)
    spectrum = _spectrum(_BIAS_K, include_dc=False)
    for j in range(n):
        rng = _stream(seed, _PRESET_KEY[preset], _SITE, j)
        draws[j] = rng.standard_normal(5)
        bias[j] = rng.standard_normal(spectrum.shape).astype(np.float32) * spectrum
    low_field = np.asarray(field_strength) < 2.0
    u = ndtr(draws)
    bias_sd = 0.03 + 0.07 * u[:, 4]
    return {
        "gain": np.exp(0.10 * draws[:, 0]),
        "offset": 0.02 * draws[:, 1],
        "fwhm_mm": 6.0 * u[:, 2] + 3.0 * low_field,
        "noise_sd": 0.01 + 0.03 * u[:, 3] + 0.01 * low_field,
        "bias": bias * bias_sd[:, None, None, None].astype(np.float32),
    }


def _check_n(n_subjects, name: str = "n_subjects") -> int:
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(n_subjects).__name__}")
    if n_subjects < 1:
        raise ValueError(f"{name} must be >= 1, got {n_subjects}")
    return int(n_subjects)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_preset(preset) -> str:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {list(PRESETS)}")
    return preset


def _plan(preset: str, n: int, seed: int) -> tuple[pd.DataFrame, dict]:
    """The table and the per-image render parameters of one preset (no images yet).

    Subject ``i`` draws everything from its own stream, in a fixed order: 8 uniforms (age,
    sex, site or split, visit count), 5 normals (TIV, gap, gap slope, severity, global
    scale), the anatomy coefficients, then the visit-interval jitter. Diagnoses (and the
    OpenBHB sites) follow a golden-ratio sequence, so every prefix of the cohort keeps the
    target proportions.
    """
    spec = _presets()[preset]
    pk = _PRESET_KEY[preset]
    weyl = _weyl(seed, preset, n)
    if preset == "openbhb":
        sites = spec["sites"]
        sizes = np.array([s["n"] for s in sites], dtype=float)
        site_idx = np.searchsorted(np.cumsum(sizes) / sizes.sum(), weyl, side="right")
        site_idx = np.minimum(site_idx, len(sites) - 1)
        field = np.array([s["field_strength"] for s in sites])
        site_names = [f"openbhb-site{s['code']:02d}" for s in sites]
        diagnoses = np.array(["HC"] * n, dtype=object)
    else:
        counts = spec["diagnosis_counts"]
        names = list(counts)
        share = np.array([counts[d] for d in names], dtype=float)
        dx_idx = np.minimum(np.searchsorted(np.cumsum(share) / share.sum(), weyl,
                                            side="right"), len(names) - 1)
        diagnoses = np.array(names, dtype=object)[dx_idx]
        field = np.array([s["field_strength"] for s in spec["sites"]])
        site_names = [f"{preset}-site{j:02d}" for j in range(len(field))]
        site_idx = None
    sites_p = _site_params(seed, preset, field)
    tiv_spec = _presets()["openbhb"]["tiv"]
    spectrum = _spectrum(_ANAT_K, include_dc=False)

    rows = []
    image_params = {k: [] for k in ("bio_age", "severity", "subject", "site", "key")}
    anatomy = np.empty((n, _ANAT_K, _ANAT_K, _ANAT_K), dtype=np.float32)
    shape_spectrum = _spectrum(_SHAPE_K, include_dc=True)
    shape = np.empty((n, 3, _SHAPE_K, _SHAPE_K, _SHAPE_K), dtype=np.float32)
    log_scale = np.empty(n)
    for i in range(n):
        rng = _stream(seed, pk, _SUBJECT, i)
        u = rng.random(8)
        z = rng.standard_normal(5)
        anatomy[i] = rng.standard_normal(spectrum.shape).astype(np.float32) * spectrum
        shape[i] = (_stream(seed, pk, _SHAPE, i).standard_normal((3, *shape_spectrum.shape))
                    .astype(np.float32) * shape_spectrum * np.float32(_SHAPE_SD_MM))
        dx = diagnoses[i]
        if preset == "openbhb":
            j = int(site_idx[i])
            site = sites[j]
            n_visits, years = 1, np.zeros(1)
            age_bl = float(_truncnorm(u[0], site["age_mean"], site["age_sd"],
                                      site["age_min"], site["age_max"]))
            female = u[1] < site["female_fraction"]
            if site["n_external_test"] > 0:
                split = "external_test"
            else:
                p_int = site["n_internal_test"] / max(site["n_train"] + site["n_internal_test"], 1)
                split = "internal_test" if u[2] < p_int else "train"
        else:
            j = min(int(u[2] * len(field)), len(field) - 1)
            visits = spec["visits"]
            probs = np.asarray(visits["probs"][dx], dtype=float)
            n_visits = int(np.searchsorted(np.cumsum(probs) / probs.sum(), u[3],
                                           side="right")) + 1
            n_visits = min(n_visits, len(probs))
            jitter = visits["interval_jitter"] * (2 * rng.random(len(probs)) - 1)
            k = np.arange(n_visits)
            years = np.where(k > 0, k * visits["interval_years"] + jitter[:n_visits], 0.0)
            age = spec["age"]
            age_bl = float(_truncnorm(u[0], spec["baseline_age_mean"], age["sd"], age["min"],
                                      age["max"] - years[-1]))
            female = u[1] < spec["female_fraction"]
            split = None
        sex = "F" if female else "M"
        tiv = tiv_spec[sex]["mean"] + tiv_spec[sex]["sd"] * z[0]
        log_scale[i] = _TIV_EXPONENT * math.log(tiv / _TIV_REF) + _GLOBAL_SD * z[4]
        gap_mean, gap_sd, slope_mean, slope_sd = _GAP[dx]
        if dx == "HC":
            gap_sd *= min(1.0, max(0.4, age_bl / _CHILD_GAP_AGE))
        gap0 = gap_mean + gap_sd * z[1]
        slope = slope_mean + slope_sd * z[2]
        sev0, sev_rate = _SEVERITY[dx]
        sev_scale = math.exp(_SEVERITY_SD * z[3])
        for s in range(n_visits):
            t = float(years[s])
            age_s = round(age_bl + t, 2)
            gap = gap0 + slope * t
            row = {
                "image_id": f"{preset}-{i:04d}-ses{s + 1}",
                "subject_id": f"{preset}-{i:04d}",
                "session": s + 1,
                "dataset": preset,
                "site": site_names[j],
                "age": age_s,
                "sex": sex,
                "diagnosis": dx,
                "years_from_baseline": round(t, 3),
                "tiv": round(tiv, 1),
                "field_strength": float(field[j]),
                "bio_age": age_s + gap,
                "true_gap": gap,
            }
            if split is not None:
                row["split"] = split
            rows.append(row)
            image_params["bio_age"].append(age_s + gap)
            image_params["severity"].append((sev0 + sev_rate * t) * sev_scale)
            image_params["subject"].append(i)
            image_params["site"].append(j)
            image_params["key"].append((pk, _IMAGE, i, s))
    table = pd.DataFrame(rows)
    subject = np.asarray(image_params["subject"])
    site = np.asarray(image_params["site"])
    params = {
        "bio_age": np.asarray(image_params["bio_age"]),
        "severity": np.asarray(image_params["severity"]),
        "subject": subject,
        "anatomy": anatomy,
        "shape": shape,
        "log_scale": log_scale,
        "key": image_params["key"],
        **{name: value[site] for name, value in sites_p.items()},
    }
    return table, params


def _ageing_loads(bio_age: np.ndarray) -> np.ndarray:
    """(m,) biological ages -> (m, n_regions) log grey-matter loss per ageing region."""
    dev, lin, acc = (np.array([v[k] for v in _AGEING.values()]) for k in (2, 3, 4))
    a = np.asarray(bio_age, dtype=float)[:, None]
    return (-dev * np.maximum(20.0 - a, 0.0) / 14.0 + lin * (a - 20.0) / 60.0
            + acc * (np.maximum(a - 60.0, 0.0) / 30.0) ** 2)


def _render(params: dict, key: float, seed: int, out: np.ndarray) -> None:
    """Write the images described by ``params`` into ``out`` (m, X, Y, Z) float32.

    Images are rendered one at a time with identical array shapes, so an image's bytes do
    not depend on which other images are generated with it (cohort size, merging).
    """
    shape = GRIDS[key][0]
    mask = _mask(key)
    log_t = np.log(np.maximum(_template(key), 1e-6))
    regions = [_region(r, key) for r in _AGEING]
    mtl = _region("medial_temporal", key)
    loads = _ageing_loads(params["bio_age"]).astype(np.float32)
    shape_loads = _shape_loads(params["bio_age"]).astype(np.float32)
    ventricles, cortex, shrink = _shape_fields(key)
    fwhm_to_sigma = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    subject_log_gm, subject_shape, last_subject = None, None, None
    for i in range(len(params["bio_age"])):
        subject = params["subject"][i]
        if subject != last_subject:        # a subject's visits are contiguous
            subject_log_gm = _field(params["anatomy"][subject][None], key)[0]
            subject_log_gm *= np.float32(_ANAT_SD)
            subject_log_gm += log_t
            subject_log_gm += np.float32(params["log_scale"][subject])
            subject_shape = _field(params["shape"][subject], key)
            last_subject = subject
        log_gm = subject_log_gm.copy()
        for load, region in zip(loads[i], regions):
            log_gm -= load * region
        severity = np.float32(params["severity"][i])
        log_gm -= severity * mtl
        vol = np.exp(log_gm, out=log_gm)
        displacement = subject_shape.copy()
        displacement += (shape_loads[i, 0] + severity * _SEVERITY_MM["ventricles"]) * ventricles
        displacement += shape_loads[i, 1] * cortex
        displacement += severity * _SEVERITY_MM["medial_temporal"] * shrink
        vol = _warp(vol, displacement, key)
        sigma = params["fwhm_mm"][i] * fwhm_to_sigma / key
        if sigma > 0.25:
            vol = gaussian_filter(vol, sigma, truncate=3.0)
        vol *= np.exp(_field(params["bias"][i][None], key)[0])
        vol *= np.float32(params["gain"][i])
        vol += np.float32(params["offset"][i])
        noise = _stream(seed, *params["key"][i]).standard_normal(shape, dtype=np.float32)
        noise *= np.float32(params["noise_sd"][i])
        vol += noise
        np.clip(vol, 0.0, 1.0, out=vol)
        vol *= mask
        out[i] = vol


def make_cohort(preset: str, *, n_subjects: int, grid_mm: float = 6, seed: int = 0) -> Cohort:
    """Generate a synthetic cohort that mimics one dataset of the paper.

    Parameters
    ----------
    preset : {"openbhb", "adni", "icbm", "oasis3"}
        ``openbhb``: healthy, one image per subject, 64 sites with the real per-site age
        distributions, sizes and field strengths, ages 6-88, an official-like ``split``
        column (the six external sites only in ``external_test``). ``adni``: HC / sMCI /
        pMCI / AD in the paper's proportions, annual visits (up to 7), ages 50-97.
        ``icbm``: HC 18-80, 57% with a second session. ``oasis3``: HC and 13% AD, 42-95,
        follow-ups about 3 years apart. Each non-OpenBHB preset has 3-6 sites of its own.
    n_subjects : int
        Number of subjects (>= 1); longitudinal presets give more images than subjects.
        Small cohorts simply leave the rarer OpenBHB sites empty.
    grid_mm : {1.5, 3, 6}, default 6
        Grid (``GRIDS[grid_mm]``); 1.5 mm is the OpenBHB 121x145x121 grid.
    seed : int, default 0
        Non-negative; the same seed gives identical tables and images, and the first
        ``k`` subjects do not depend on ``n_subjects``.

    Returns
    -------
    Cohort
        Table with the :data:`brainkit.data.COLUMNS` plus ``tiv`` (ml), ``field_strength``
        (T), ``bio_age`` (age + true_gap, what the image shows) and ``true_gap`` (and
        ``split`` for ``openbhb``); images (n_images, X, Y, Z) float32 in [0, 1], zero
        outside :func:`brain_mask`.

    Examples
    --------
    >>> cohort = make_cohort("adni", n_subjects=20, grid_mm=6, seed=1)
    >>> sorted(cohort.table["diagnosis"].unique())
    ['AD', 'HC', 'pMCI', 'sMCI']
    """
    preset = _check_preset(preset)
    _check_n(n_subjects)
    return make_merged({preset: n_subjects}, grid_mm=grid_mm, seed=seed)


def make_merged(sizes: Mapping[str, int], *, grid_mm: float = 6, seed: int = 0) -> Cohort:
    """Generate several presets into one cohort (distinct datasets, sites and subjects).

    Parameters
    ----------
    sizes : mapping of str to int
        Preset name -> number of subjects, e.g. ``{"openbhb": 300, "adni": 80}``. Rows come
        in this order.
    grid_mm : {1.5, 3, 6}, default 6
    seed : int, default 0
        Each preset has its own random streams, so ``make_merged({"adni": 80})`` equals
        ``make_cohort("adni", n_subjects=80)`` and adding a preset leaves the others unchanged.

    Returns
    -------
    Cohort
        ``dataset`` is the preset name; ``site`` and ``subject_id`` are prefixed by it. If
        ``openbhb`` is merged with other presets, their rows get ``split = "train"`` (the
        paper pre-trains on the merged data and tests on OpenBHB's internal / external sets).
    """
    if not isinstance(sizes, Mapping):
        raise TypeError(f"sizes must be a mapping of preset name -> n_subjects, e.g. "
                        f"{{'openbhb': 300, 'adni': 80}}; got {type(sizes).__name__}")
    if not sizes:
        raise ValueError(f"sizes is empty; name at least one preset of {list(PRESETS)}")
    for preset, n in sizes.items():
        _check_preset(preset)
        _check_n(n, f"sizes[{preset!r}]")
    key = _grid_key(grid_mm)
    seed = _check_seed(seed)
    tables, plans = [], []
    for preset, n in sizes.items():
        table, params = _plan(preset, int(n), seed)
        tables.append(table)
        plans.append(params)
    table = pd.concat(tables, ignore_index=True)
    if "split" in table:
        table["split"] = table["split"].fillna("train")
    shape, affine = GRIDS[key]
    images = np.empty((len(table), *shape), dtype=np.float32)
    start = 0
    for params in plans:
        stop = start + len(params["bio_age"])
        _render(params, key, seed, images[start:stop])
        start = stop
    return Cohort(table, images, np.array(affine), check_finite=False)
