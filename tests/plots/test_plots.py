"""Figure structure: traces, names, colours, axis titles and the data they carry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from brainkit import plots
from brainkit.eval import bag_roc, fit_bag_trajectories, fit_power_law, power_law, reliability_curve
from brainkit.plots import LOSS_COLORS, TEMPLATE


def runs_table(rng):
    rows = []
    for loss in ("exp", "l1", "mystery"):
        for n in (500, 1000, 2000, 4000):
            for fold in range(3):
                rows.append({"loss": loss, "n_train": n, "fold": fold,
                             "mae_ext": power_law(n, 40.0, 0.5, 2.0) + rng.normal(0, 0.1),
                             "bacc": 0.05 + 0.01 * fold})
    return pd.DataFrame(rows)


def assert_themed(fig):
    assert isinstance(fig, go.Figure)
    assert fig.layout.template.layout.font.family == pio.templates[TEMPLATE].layout.font.family


def test_theme_is_registered_once_and_colours_are_fixed():
    assert TEMPLATE in pio.templates
    template = pio.templates[TEMPLATE]
    assert plots.register_template() == TEMPLATE
    assert pio.templates[TEMPLATE] is template  # not rebuilt
    assert pio.templates.default != TEMPLATE      # the user's default is left alone
    assert set(LOSS_COLORS) == {"ridge", "l1", "yaware", "threshold", "exp", "rnc", "adapn"}
    assert len(set(LOSS_COLORS.values())) == 7
    assert plots.loss_color("exp") == LOSS_COLORS["exp"]
    assert plots.loss_color("expw") == plots.loss_color("expw")  # stable for unknown names
    assert plots.loss_label("rnc") == "RnC" and plots.loss_label("custom") == "custom"


def test_scaling_curves_draw_a_summary_interval():
    summary = pd.DataFrame({"loss": ["exp", "exp", "ridge", "ridge"], "n_train": [100, 400] * 2,
                            "mae_ext": [6.0, 4.0, 7.0, 6.5], "mae_ext_low": [5.0, 3.5, 6.0, 6.0],
                            "mae_ext_high": [7.5, 4.2, 8.0, 7.0]})
    fig = plots.scaling_curves(summary)
    exp = [t for t in fig.data if t.meta["loss"] == "exp"][0]
    np.testing.assert_allclose(exp.error_y.array, [1.5, 0.2])
    np.testing.assert_allclose(exp.error_y.arrayminus, [1.0, 0.5])
    assert [t.name for t in fig.data] == ["voxel ridge", "exp"]


def test_scaling_curves_means_errors_and_fits(rng):
    table = runs_table(rng)
    fits = {loss: fit_power_law(sub["n_train"], sub["mae_ext"])
            for loss, sub in table.groupby("loss") if loss != "mystery"}
    fig = plots.scaling_curves(table, fits=fits)
    assert_themed(fig)
    data = [t for t in fig.data if not (t.meta or {}).get("kind")]
    assert [t.name for t in data] == ["L1", "exp", "mystery"]  # known losses first, fixed order
    exp = data[1]
    assert exp.line.color == LOSS_COLORS["exp"]
    expected = table[table["loss"] == "exp"].groupby("n_train")["mae_ext"]
    np.testing.assert_allclose(exp.x, expected.mean().index)
    np.testing.assert_allclose(exp.y, expected.mean().to_numpy())
    np.testing.assert_allclose(exp.error_y.array, expected.std().to_numpy())
    fit_traces = [t for t in fig.data if (t.meta or {}).get("kind") == "fit"]
    assert {t.meta["loss"] for t in fit_traces} == {"exp", "l1"}
    for t in fit_traces:
        np.testing.assert_allclose(t.y, fits[t.meta["loss"]].predict(np.asarray(t.x)))
        assert t.line.dash == "dash" and t.line.color == LOSS_COLORS[t.meta["loss"]]
    assert fig.layout.xaxis.type == "log"
    assert fig.layout.xaxis.title.text == "Training images"
    assert fig.layout.yaxis.title.text == "External MAE (years)"


def test_site_bacc_curves_percent_and_chance(rng):
    fig = plots.site_bacc_curves(runs_table(rng), chance=1 / 64)
    assert_themed(fig)
    exp = next(t for t in fig.data if t.name == "exp")
    np.testing.assert_allclose(exp.y, [6.0] * 4)  # mean of 5, 6, 7 %
    chance = next(t for t in fig.data if t.name == "chance")
    np.testing.assert_allclose(chance.y, [100 / 64] * 2)
    assert fig.layout.yaxis.title.text == "Site balanced accuracy (%)"
    with pytest.raises(ValueError, match="chance must be a fraction"):
        plots.site_bacc_curves(runs_table(rng), chance=5.0)


def test_mae_vs_accuracy_reports_pearson_r(rng):
    mae = np.array([3.2, 3.0, 2.8, 2.6, 4.0, 3.5, 3.0])
    acc = np.array([0.70, 0.72, 0.75, 0.78, 0.74, 0.70, 0.76])
    table = pd.DataFrame({"loss": ["exp"] * 4 + ["l1"] * 3, "mae": mae, "balanced_accuracy": acc})
    fig = plots.mae_vs_accuracy(table)
    assert_themed(fig)
    markers = [t for t in fig.data if t.mode == "markers"]
    r_exp = np.corrcoef(mae[:4], acc[:4])[0, 1]
    assert [t.name for t in markers] == [f"L1 (r = {np.corrcoef(mae[4:], acc[4:])[0, 1]:.2f})",
                                         f"exp (r = {r_exp:.2f})"]
    np.testing.assert_allclose(markers[1].y, 100 * acc[:4])
    fit = next(t for t in fig.data if (t.meta or {}).get("kind") == "fit" and t.meta["loss"] == "exp")
    slope = np.polyfit(mae[:4], 100 * acc[:4], 1)[0]
    assert (fit.y[1] - fit.y[0]) / (fit.x[1] - fit.x[0]) == pytest.approx(slope)
    assert fig.layout.xaxis.title.text == "Brain-age MAE (years)"


def test_bag_distributions_per_group_per_loss(rng):
    table = pd.DataFrame({"bag": rng.normal(size=300), "diagnosis": rng.choice(["AD", "HC", "pMCI"], 300),
                          "loss": rng.choice(["exp", "yaware"], 300)})
    fig = plots.bag_distributions(table)
    assert_themed(fig)
    assert [type(t).__name__ for t in fig.data] == ["Violin", "Violin"]
    assert [t.name for t in fig.data] == ["y-aware", "exp"]
    assert fig.layout.violinmode == "group"
    assert list(fig.layout.xaxis.categoryarray) == ["HC", "pMCI", "AD"]
    yaware = fig.data[0]
    mask = table["loss"] == "yaware"
    np.testing.assert_allclose(yaware.y, table.loc[mask, "bag"])
    assert list(yaware.x) == table.loc[mask, "diagnosis"].tolist()
    assert yaware.line.color == LOSS_COLORS["yaware"]
    box = plots.bag_distributions(table, loss=None, kind="box")
    assert [t.name for t in box.data] == ["HC", "pMCI", "AD"]
    assert box.data[0].marker.color == plots.GROUP_COLORS["HC"]
    assert box.layout.yaxis.title.text == "Brain-age gap (years)"
    with pytest.raises(ValueError, match="kind must be"):
        plots.bag_distributions(table, kind="strip")


def test_roc_curves(rng):
    bag = np.r_[rng.normal(0, 1, 100), rng.normal(1, 1, 100)]
    case = np.r_[np.zeros(100), np.ones(100)]
    curves = {"l1": bag_roc(bag + rng.normal(0, 2, 200), case), "exp": bag_roc(bag, case)}
    fig = plots.roc_curves(curves)
    assert_themed(fig)
    assert [t.name for t in fig.data] == [f"L1 (AUC = {curves['l1'].auc:.2f})",
                                          f"exp (AUC = {curves['exp'].auc:.2f})", "chance"]
    np.testing.assert_allclose(fig.data[1].x, curves["exp"].fpr)
    np.testing.assert_allclose(fig.data[1].y, curves["exp"].tpr)
    assert fig.data[1].meta["auc"] == curves["exp"].auc
    assert fig.layout.xaxis.title.text == "False-positive rate"
    with pytest.raises(TypeError, match="RocCurve"):
        plots.roc_curves({"exp": (1, 2)})


def test_bag_trajectories(rng):
    rows = []
    for s in range(40):
        g = "AD" if s % 2 else "HC"
        b0 = rng.normal(0, 2)
        for t in (0.0, 1.0, 2.0):
            rows.append({"subject_id": s, "diagnosis": g, "years_from_baseline": t,
                         "bag": b0 + (1.0 if g == "AD" else 0.0) * t + rng.normal(0, 0.5)})
    table = pd.DataFrame(rows)
    res = fit_bag_trajectories(table, covariates=(), n_points=5)
    fig = plots.bag_trajectories(res, observed=table)
    assert_themed(fig)
    kinds = [(t.meta["group"], t.meta["kind"]) for t in fig.data]
    assert kinds == [("HC", "observed"), ("AD", "observed"), ("HC", "ci"), ("HC", "fit"),
                     ("AD", "ci"), ("AD", "fit")]
    fit_ad = fig.data[5]
    traj = res.trajectories[res.trajectories["group"] == "AD"]
    np.testing.assert_allclose(fit_ad.y, traj["fit"])
    slope = res.group_slopes.set_index("group").loc["AD", "slope"]
    assert fit_ad.name == f"AD ({slope:+.2f}/yr)"
    assert fit_ad.line.color == plots.GROUP_COLORS["AD"]
    # Observed: one polyline per subject, separated by gaps.
    assert sum(v is None for v in fig.data[1].x) == 20
    assert fig.layout.xaxis.title.text == "Years from baseline"
    with pytest.raises(TypeError, match="TrajectoryResult"):
        plots.bag_trajectories(table)


def test_reliability_diagram(rng):
    p = rng.random(400)
    y = (rng.random(400) < p).astype(int)
    curves = {"exp": reliability_curve(y, p, n_bins=10), "l1": reliability_curve(y, p ** 2, n_bins=10)}
    fig = plots.reliability_diagram(curves)
    assert_themed(fig)
    from brainkit.eval import expected_calibration_error

    ece = expected_calibration_error(y, p ** 2, n_bins=10)
    assert fig.data[0].name == f"L1 (ECE = {100 * ece:.1f}%)"
    assert fig.data[0].meta["ece"] == pytest.approx(ece)
    np.testing.assert_allclose(fig.data[1].x, curves["exp"]["confidence"])
    np.testing.assert_allclose(fig.data[1].y, curves["exp"]["accuracy"])
    assert fig.data[-1].name == "perfect calibration"
    assert fig.layout.yaxis.title.text == "Observed frequency"
    single = plots.reliability_diagram(curves["exp"])
    assert single.data[0].name.startswith("model (ECE")
    with pytest.raises(ValueError, match="lacks column"):
        plots.reliability_diagram({"exp": pd.DataFrame({"x": [1]})})


def test_figure_functions_never_call_show():
    """Every public figure function returns its figure; none displays it."""
    import ast
    import inspect

    import brainkit.plots as package

    for name in package.__all__:
        obj = getattr(package, name)
        if not inspect.isfunction(obj) or name in {"register_template", "loss_color",
                                                   "loss_label", "group_color",
                                                   "category_colors"}:
            continue
        tree = ast.parse(inspect.getsource(inspect.getmodule(obj)))
        calls = [n.func.attr for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
        assert "show" not in calls, name
        assert inspect.signature(obj).return_annotation in (go.Figure, "go.Figure"), name


def test_ledger_evidence_puts_every_verdict_on_its_side_of_zero():
    """A supported finding's bar lies right of 0, a contradicted one's left of 0, an
    inconclusive one's straddles it, whatever the claim's direction and unit."""
    from brainkit.experiments.findings import verdict
    from brainkit.eval.uncertainty import Estimate
    from brainkit.plots import ledger_evidence

    rows = [("AUC up", "> 0", 0.05, 0.01, 0.08), ("ECE under 15", "< 15", 18.6, 15.2, 23.7),
            ("MAE down", "< 0", -1.9, -2.3, -1.5), ("r positive", "> 0", 0.5, -0.1, 0.9),
            ("not run", "> 0", float("nan"), float("nan"), float("nan"))]
    ledger = pd.DataFrame(rows, columns=["finding", "claimed", "estimate", "low", "high"])
    ledger["verdict"] = [
        verdict(Estimate(value=e, low=lo, high=hi, level=0.95, n=10) if e == e else None,
                c.split()[0], float(c.split()[1]))
        for _, c, e, lo, hi in rows]
    assert list(ledger["verdict"]) == ["supported", "contradicted", "supported",
                                       "inconclusive", "not computed"]
    fig = ledger_evidence(ledger)
    seen = {}
    for trace in fig.data:
        for x, y, plus, minus in zip(trace.x, trace.y, trace.error_x.array,
                                     trace.error_x.arrayminus):
            seen[y] = (trace.name, x - minus, x + plus)
    assert len(seen) == 4                      # the row without an estimate is left out
    for label, (name, left, right) in seen.items():
        if name == "supported":
            assert left > 0, label
        elif name == "contradicted":
            assert right < 0, label
        else:
            assert left < 0 < right, label
    # a "< t" claim is mirrored: the ECE row's right end is (15 - 15.2) / se
    se = (23.7 - 15.2) / (2 * 1.959963984540054)
    name, left, right = seen["2. ECE under 15"]
    assert right == pytest.approx(-0.2 / se) and left == pytest.approx(-8.7 / se)
    with pytest.raises(ValueError, match="claimed"):
        ledger_evidence(ledger.assign(claimed="= 0"))
