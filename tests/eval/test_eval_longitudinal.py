"""Mixed-model trajectories: planted group slopes, fallbacks, and real OASIS-2 data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import brainkit.eval.longitudinal as longitudinal
from brainkit.eval import fit_bag_trajectories

SLOPES = {"HC": 0.0, "sMCI": 0.2, "pMCI": 0.8, "AD": 1.2}


def planted_cohort(rng, n_per_group=40, visits=(0.0, 1.0, 2.0, 3.0)):
    rows = []
    sid = 0
    for g, slope in SLOPES.items():
        for _ in range(n_per_group):
            sid += 1
            age0 = rng.uniform(60, 85)
            sex = rng.choice(["F", "M"])
            b0 = rng.normal(0, 3) + 0.05 * (age0 - 70) + (0.5 if sex == "M" else 0.0)
            b1 = slope + rng.normal(0, 0.3)
            for t in visits[: rng.integers(2, len(visits) + 1)]:
                rows.append({"subject_id": f"s{sid}", "diagnosis": g, "years_from_baseline": t,
                             "age": age0 + t, "sex": sex,
                             "bag": b0 + b1 * t + rng.normal(0, 0.8)})
    return pd.DataFrame(rows)


def test_recovers_planted_group_slopes(rng):
    table = planted_cohort(rng)
    res = fit_bag_trajectories(table)
    assert res.converged and res.re_formula == "~years_from_baseline"
    assert res.reference == "HC"
    slopes = res.group_slopes.set_index("group")
    assert slopes.index.tolist() == ["HC", "sMCI", "pMCI", "AD"]
    for g, true in SLOPES.items():
        row = slopes.loc[g]
        assert row["ci_low"] < true < row["ci_high"], (g, row.to_dict())
        assert row["slope"] == pytest.approx(true, abs=0.25)
    # Differences are the interaction terms, and equal slope_g - slope_HC.
    diffs = res.slope_differences.set_index("group")
    for g in ("sMCI", "pMCI", "AD"):
        assert diffs.loc[g, "difference"] == pytest.approx(slopes.loc[g, "slope"] - slopes.loc["HC", "slope"])
    assert diffs.loc["AD", "p_value"] < 1e-6 and diffs.loc["AD", "difference"] > 0
    fe = res.fixed_effects.set_index("term")
    assert {"Intercept", "years_from_baseline", "age_bl", "sex[T.M]",
            "years_from_baseline:diagnosis[T.AD]"} <= set(fe.index)
    assert fe.loc["age_bl", "estimate"] == pytest.approx(0.05, abs=0.05)
    assert res.n_obs == len(table) and res.n_subjects == table["subject_id"].nunique()


def test_trajectories_are_linear_in_time_with_the_group_slope(rng):
    res = fit_bag_trajectories(planted_cohort(rng, n_per_group=20), n_points=11)
    traj = res.trajectories
    assert len(traj) == 4 * 11
    slopes = res.group_slopes.set_index("group")["slope"]
    for g, sub in traj.groupby("group"):
        fitted_slope = np.polyfit(sub["time"], sub["fit"], 1)[0]
        assert fitted_slope == pytest.approx(slopes[g], rel=1e-9, abs=1e-12)
        assert np.all(sub["ci_low"] < sub["fit"]) and np.all(sub["fit"] < sub["ci_high"])


def test_age_bl_is_derived_from_the_first_visit(rng):
    table = planted_cohort(rng, n_per_group=15)
    derived = fit_bag_trajectories(table)
    first_age = table.sort_values("years_from_baseline").groupby("subject_id")["age"].first()
    explicit = fit_bag_trajectories(table.assign(age_bl=table["subject_id"].map(first_age)))
    pd.testing.assert_frame_equal(derived.fixed_effects, explicit.fixed_effects)
    with pytest.raises(ValueError, match="needed to derive age_bl"):
        fit_bag_trajectories(table.drop(columns="age"))


def test_optimizer_fallbacks_are_recorded(rng, monkeypatch):
    table = planted_cohort(rng, n_per_group=15)
    real = longitudinal._fit_once
    calls = []

    def flaky(y, X, subj, Z, method, reml):
        calls.append((Z.shape[1], method))
        if Z.shape[1] == 2 or method == "lbfgs":  # every random-slope fit and lbfgs "fail"
            return None, False, "simulated failure"
        return real(y, X, subj, Z, method, reml)

    monkeypatch.setattr(longitudinal, "_fit_once", flaky)
    res = fit_bag_trajectories(table)
    assert res.converged and res.re_formula == "~1" and res.method == "powell"
    assert res.attempts[["re_formula", "method", "converged"]].values.tolist() == [
        ["~years_from_baseline", "lbfgs", False], ["~years_from_baseline", "powell", False],
        ["~years_from_baseline", "nm", False], ["~years_from_baseline", "cg", False],
        ["~1", "lbfgs", False], ["~1", "powell", True]]

    monkeypatch.setattr(longitudinal, "_fit_once", lambda *a: (None, False, "simulated failure"))
    with pytest.raises(RuntimeError, match="no mixed-model fit produced estimates"):
        fit_bag_trajectories(table)


def test_input_errors(rng):
    table = planted_cohort(rng, n_per_group=5)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['bag'\]"):
        fit_bag_trajectories(table.drop(columns="bag"))
    with pytest.raises(ValueError, match="column 'bag' has missing values"):
        fit_bag_trajectories(table.assign(bag=np.where(table.index == 3, np.nan, table["bag"])))
    with pytest.raises(ValueError, match="at least two groups"):
        fit_bag_trajectories(table[table["diagnosis"] == "HC"])
    with pytest.raises(ValueError, match="reference 'CN' is not a value"):
        fit_bag_trajectories(table, reference="CN")
    with pytest.raises(ValueError, match="single level"):
        fit_bag_trajectories(table.assign(sex="F"))


def test_one_visit_per_subject_is_refused_with_a_reason(rng):
    # every subject seen once: statsmodels said only "Singular matrix"
    table = planted_cohort(rng, visits=(0.0, 1.0)).drop_duplicates("subject_id")
    with pytest.raises(ValueError, match=r"each of the 160 subjects is seen at a single time; "
                                         r"a longitudinal mixed model needs"):
        fit_bag_trajectories(table)


def test_oasis2_demented_decline_faster_in_nwbv(shared_data):
    """Real data: normalised whole-brain volume falls faster in dementia (OASIS-2)."""
    raw = pd.read_csv(shared_data / "oasis" / "oasis_longitudinal.csv")
    assert len(raw) == 373 and raw["Subject ID"].nunique() == 150
    table = pd.DataFrame({
        "subject_id": raw["Subject ID"], "diagnosis": raw["Group"],
        "years_from_baseline": raw["MR Delay"] / 365.25, "age": raw["Age"], "sex": raw["M/F"],
        "nwbv": raw["nWBV"],
    })
    res = fit_bag_trajectories(table, value="nwbv", reference="Nondemented")
    assert res.converged
    assert res.attempts["converged"].iloc[-1] and res.method in ("lbfgs", "powell", "nm", "cg")
    slopes = res.group_slopes.set_index("group")
    assert slopes.loc["Nondemented", "slope"] < 0  # everyone loses volume with age
    demented = res.slope_differences.set_index("group").loc["Demented"]
    assert demented["difference"] < 0 and demented["p_value"] < 0.05
    assert slopes.loc["Demented", "slope"] < slopes.loc["Nondemented", "slope"]
