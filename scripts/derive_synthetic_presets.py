"""Derive the summary numbers that the synthetic cohort ships with.

Writes ``brainkit/data/_synthetic_presets.json``: the only data-derived numbers inside the
package. Nothing per subject is copied, only per-site summaries:

- ``openbhb``: from the real OpenBHB participants table (``openbhb/participants.tsv``,
  Dufumier et al. 2022): for each of the 64 ``siteXacq`` codes its size, split counts, age
  mean / sd / min / max, fraction of women and field strength; TIV mean / sd by sex.
- ``adni``, ``icbm``, ``oasis3``: cohort sizes, diagnosis counts and age summaries from Table 1
  and Table 2 and section 3.1 of Barbano et al. (the brainkit paper), plus the modelling
  choices the paper does not report (number of sites, field strength per site, visit
  pattern, fraction of women), each marked as an assumption in the file.

Usage::

    python scripts/derive_synthetic_presets.py [--participants PATH] [--out PATH]

``PATH`` defaults to ``<data root>/openbhb/participants.tsv`` (``BRAINKIT_DATA`` or
``../shared/data``) and ``brainkit/data/_synthetic_presets.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from brainkit.data.paths import PROJECT_ROOT, data_root

__all__ = ["derive_openbhb", "paper_presets", "main"]

_REQUIRED = ("age", "sex", "siteXacq", "split", "magnetic_field_strength", "tiv")
_SEX = {"female": "F", "male": "M"}


def _mean_years_over_images(visit_probs: list[float], interval: float) -> float:
    """Mean ``years_from_baseline`` over all images for a visit-count distribution.

    A subject with ``k`` visits (probability ``visit_probs[k - 1]``) has images at
    ``0, interval, ..., (k - 1) * interval`` years.
    """
    p = np.asarray(visit_probs, dtype=float)
    k = np.arange(1, len(p) + 1)
    return float(np.sum(p * k * (k - 1) * interval / 2) / np.sum(p * k))


def derive_openbhb(participants: Path) -> dict:
    """Per-site summaries of the OpenBHB participants table.

    Parameters
    ----------
    participants : pathlib.Path
        The tab-separated OpenBHB ``participants.tsv``.

    Returns
    -------
    dict
        ``{"source", "sha256", "n_subjects", "age_min", "age_max", "tiv", "sites"}`` where
        ``sites`` is a list (one entry per ``siteXacq`` code) of
        ``{"code", "n", "n_train", "n_internal_test", "n_external_test", "age_mean",
        "age_sd", "age_min", "age_max", "female_fraction", "field_strength"}``.
    """
    raw = participants.read_bytes()
    table = pd.read_csv(participants, sep="\t")
    missing = [c for c in _REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"{participants}: missing column(s) {missing}; expected the OpenBHB "
                         f"participants table with {list(_REQUIRED)}")
    bad_sex = ~table["sex"].isin(list(_SEX))
    if bad_sex.any():
        row = int(np.flatnonzero(bad_sex.to_numpy())[0])
        raise ValueError(f"{participants}: row {row}: sex {table['sex'].iloc[row]!r}, "
                         f"expected one of {list(_SEX)}")
    sites = []
    for code, group in table.groupby("siteXacq", sort=True):
        fields = group["magnetic_field_strength"].unique()
        if len(fields) != 1:
            raise ValueError(f"{participants}: siteXacq {code} has several field strengths "
                             f"{sorted(fields)}; expected one per site")
        split = group["split"].value_counts()
        age = group["age"].astype(float)
        sites.append({
            "code": int(code),
            "n": int(len(group)),
            "n_train": int(split.get("train", 0)),
            "n_internal_test": int(split.get("internal_test", 0)),
            "n_external_test": int(split.get("external_test", 0)),
            "age_mean": round(float(age.mean()), 3),
            # A one-subject site has no sd; 1 year keeps the sampler defined.
            "age_sd": round(float(age.std(ddof=1)) if len(group) > 1 else 1.0, 3),
            "age_min": round(float(age.min()), 3),
            "age_max": round(float(age.max()), 3),
            "female_fraction": round(float((group["sex"] == "female").mean()), 4),
            "field_strength": float(fields[0]),
        })
    tiv = {}
    for sex, code in _SEX.items():
        values = table.loc[table["sex"] == sex, "tiv"].astype(float)
        tiv[code] = {"mean": round(float(values.mean()), 2),
                     "sd": round(float(values.std(ddof=1)), 2)}
    return {
        "source": "OpenBHB participants.tsv (Dufumier et al. 2022, NeuroImage 263:119637)",
        "sha256": hashlib.sha256(raw).hexdigest(),
        "n_subjects": int(len(table)),
        "age_min": float(table["age"].min()),
        "age_max": float(table["age"].max()),
        "tiv": tiv,
        "sites": sites,
    }


def paper_presets() -> dict:
    """ADNI, ICBM and OASIS-3 presets: paper numbers plus marked modelling assumptions.

    Table 1 of the paper: ADNI 1754 subjects / 14332 images, age 76.22 (7.17) in
    [50.5, 97.4]; ICBM 622 / 977, 33.71 (13.94) in [18, 80]; OASIS-3 685 / 1354,
    67.77 (9.16) in [42, 95]. Section 3.1: ADNI 633 HC, 483 sMCI, 229 pMCI, 409 AD;
    OASIS-3 88 AD. Table 2 (healthy): ADNI 633 subjects / 4367 images, ICBM 622 / 977,
    OASIS-3 597 / 1262.

    Returns
    -------
    dict
        One entry per preset with ``diagnosis_counts``, ``age`` (the paper's image-level
        mean, sd, min, max), ``visits`` (per-diagnosis visit-count probabilities and the
        interval in years), ``baseline_age_mean`` (the image-level mean minus the mean
        follow-up), ``sites`` (field strength per site) and ``female_fraction``.
    """
    presets = {
        "adni": {
            "source": "Barbano et al., Table 1, Table 2, section 3.1",
            "n_subjects": 1754, "n_images": 14332,
            "diagnosis_counts": {"HC": 633, "sMCI": 483, "pMCI": 229, "AD": 409},
            "age": {"mean": 76.22, "sd": 7.17, "min": 50.5, "max": 97.4},
            "assumed": "visits, sites, field strengths, female_fraction, interval_jitter: "
                       "the paper reports 8.2 images per subject (repeat scans within a visit "
                       "included); the synthetic preset keeps one image per annual visit, "
                       "up to 7 visits (mean 3.85); 6 sites, ADNI-1-like at 1.5 T, later "
                       "phases at 3 T",
            "visits": {"interval_years": 1.0, "interval_jitter": 0.08,
                       "probs": {dx: [0.10, 0.15, 0.20, 0.20, 0.15, 0.10, 0.10]
                                 for dx in ("HC", "sMCI", "pMCI", "AD")}},
            "sites": [{"field_strength": f} for f in (1.5, 1.5, 1.5, 3.0, 3.0, 3.0)],
            "female_fraction": 0.47,
        },
        "icbm": {
            "source": "Barbano et al., Table 1, Table 2",
            "n_subjects": 622, "n_images": 977,
            "diagnosis_counts": {"HC": 622},
            "age": {"mean": 33.71, "sd": 13.94, "min": 18.0, "max": 80.0},
            "assumed": "a second session for 57% of subjects (977 images / 622 subjects), "
                       "0.1 to 2 years after the first; 3 sites; female_fraction",
            "visits": {"interval_years": 1.05, "interval_jitter": 0.9,
                       "probs": {"HC": [0.429, 0.571]}},
            "sites": [{"field_strength": f} for f in (1.5, 1.5, 3.0)],
            "female_fraction": 0.45,
        },
        "oasis3": {
            "source": "Barbano et al., Table 1, Table 2, section 3.1",
            "n_subjects": 685, "n_images": 1354,
            "diagnosis_counts": {"HC": 597, "AD": 88},
            "age": {"mean": 67.77, "sd": 9.16, "min": 42.0, "max": 95.0},
            "assumed": "visit probabilities matching 2.11 images per HC subject (1262 / 597) "
                       "and 1.05 per AD subject (92 / 88), about 3 years apart; 3 sites "
                       "(two 3 T, one 1.5 T); female_fraction",
            "visits": {"interval_years": 3.0, "interval_jitter": 0.15,
                       "probs": {"HC": [0.35, 0.30, 0.24, 0.11], "AD": [0.95, 0.05]}},
            "sites": [{"field_strength": f} for f in (3.0, 3.0, 1.5)],
            "female_fraction": 0.56,
        },
    }
    for spec in presets.values():
        counts = spec["diagnosis_counts"]
        total = sum(counts.values())
        # Image-weighted mean follow-up, pooled over diagnoses by their share of subjects.
        mean_years = 0.0
        weight = 0.0
        for dx, probs in spec["visits"]["probs"].items():
            k = np.arange(1, len(probs) + 1)
            images_per_subject = float(np.sum(np.asarray(probs) * k))
            share = counts[dx] / total * images_per_subject
            mean_years += share * _mean_years_over_images(probs,
                                                          spec["visits"]["interval_years"])
            weight += share
        spec["baseline_age_mean"] = round(spec["age"]["mean"] - mean_years / weight, 3)
    return presets


def main(argv: list[str] | None = None) -> Path:
    """Derive the presets and write the JSON file; returns the written path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=Path, default=None,
                        help="OpenBHB participants.tsv (default: <data root>/openbhb/)")
    parser.add_argument("--out", type=Path,
                        default=PROJECT_ROOT / "brainkit" / "data" / "_synthetic_presets.json")
    args = parser.parse_args(argv)
    participants = args.participants or data_root() / "openbhb" / "participants.tsv"
    if not participants.is_file():
        raise FileNotFoundError(f"{participants} not found; pass --participants PATH")
    presets = {"format_version": 1, "openbhb": derive_openbhb(participants)}
    presets.update(paper_presets())
    args.out.write_text(json.dumps(presets, indent=1) + "\n")
    print(f"wrote {args.out} ({len(presets['openbhb']['sites'])} OpenBHB sites)")
    return args.out


if __name__ == "__main__":
    main()
