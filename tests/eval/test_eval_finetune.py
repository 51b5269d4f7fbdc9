"""Fine-tuning a (tiny) pretrained encoder on volumes with a planted class signal."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from brainkit.eval import FinetunedClassifier, finetune_classifier, transfer_matrix
from brainkit.eval.calibration import expected_calibration_error


class TinyEncoder(nn.Module):
    """(B, 1, X, Y, Z) -> (B, 4): one conv, batch norm, ReLU, global average pooling."""

    out_features = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(4)
        self.pool = nn.AdaptiveAvgPool3d(1)

    def forward(self, x):
        return self.pool(torch.relu(self.norm(self.conv(x)))).flatten(1)


def planted_volumes(rng, n, *, strength=1.0):
    """8x8x8 noise; the positive class is brighter in half the volume."""
    y = np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(int)
    rng.shuffle(y)
    x = rng.normal(size=(n, 8, 8, 8)).astype(np.float32)
    x[y == 1, :4] += strength
    return x, y


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return TinyEncoder()


def balanced_accuracy(y, pred):
    return np.mean([np.mean(pred[y == c] == c) for c in (0, 1)])


def test_finetuning_learns_the_planted_signal(rng, encoder):
    x, y = planted_volumes(rng, 64)
    x_test, y_test = planted_volumes(rng, 64)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    clf = finetune_classifier(encoder, x, y, epochs=15, lr=3e-2, batch_size=16, device="cpu", seed=0)
    proba = clf.predict_proba(x_test)
    assert proba.shape == (64, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert balanced_accuracy(y_test, clf.predict(x_test)) > 0.9
    assert clf.history_[-1] < clf.history_[0]
    np.testing.assert_array_equal(clf.classes_, [0, 1])
    # The pretrained encoder passed in is untouched; the fitted copy changed.
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(clf.model_.encoder.conv.weight, before["conv.weight"])


def test_frozen_encoder_trains_only_the_head(rng, encoder):
    x, y = planted_volumes(rng, 32)
    clf = finetune_classifier(encoder, x, y, epochs=3, lr=1e-2, batch_size=8, device="cpu",
                              seed=0, freeze_encoder=True)
    for k, v in encoder.state_dict().items():
        assert torch.equal(clf.model_.encoder.state_dict()[k], v), k  # incl. BN running stats


def test_same_seed_same_model_and_string_labels(rng, encoder):
    x, y = planted_volumes(rng, 24)
    labels = np.where(y == 1, "HC", "AD")  # sorted: "AD" < "HC", so "HC" is positive
    a = finetune_classifier(encoder, x, labels, epochs=2, lr=1e-2, batch_size=8, device="cpu", seed=3)
    b = finetune_classifier(encoder, x, labels, epochs=2, lr=1e-2, batch_size=8, device="cpu", seed=3)
    c = finetune_classifier(encoder, x, labels, epochs=2, lr=1e-2, batch_size=8, device="cpu", seed=4)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    assert not np.array_equal(a.predict_proba(x), c.predict_proba(x))
    np.testing.assert_array_equal(a.classes_, ["AD", "HC"])
    assert set(a.predict(x)) <= {"AD", "HC"}
    # Channel-first input (n, 1, X, Y, Z) and a tensor give the same predictions.
    np.testing.assert_allclose(a.decision_function(torch.from_numpy(x[:, None])),
                               a.decision_function(x), rtol=1e-6)


def test_memory_mapped_uint8_store(rng, encoder, tmp_path):
    """A read-only uint8 memmap (a compact image store) is read batch by batch."""
    x, y = planted_volumes(rng, 24)
    path = tmp_path / "images.npy"
    np.save(path, np.clip(x * 40 + 128, 0, 255).astype(np.uint8))
    store = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable array" warning
        clf = finetune_classifier(encoder, store, y, epochs=2, lr=1e-3, batch_size=8,
                                  device="cpu", seed=0)
        p_store = clf.predict_proba(store)
    p_float = clf.predict_proba(np.asarray(store, dtype=np.float32))
    np.testing.assert_allclose(p_store, p_float, rtol=1e-6)
    bad = x.copy()
    bad[5, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite values \(in images"):
        clf.predict_proba(bad)


def test_argument_errors(rng, encoder):
    x, y = planted_volumes(rng, 12)
    with pytest.raises(ValueError, match="out_features"):
        finetune_classifier(nn.Conv3d(1, 2, 3), x, y, epochs=1, lr=1e-3, batch_size=4,
                            device="cpu", seed=0)
    with pytest.raises(ValueError, match="exactly two classes"):
        finetune_classifier(encoder, x, np.arange(12) % 3, epochs=1, lr=1e-3, batch_size=4,
                            device="cpu", seed=0)
    with pytest.raises(ValueError, match=r"images must have shape \(n, X, Y, Z\)"):
        finetune_classifier(encoder, x[:, 0], y, epochs=1, lr=1e-3, batch_size=4, device="cpu", seed=0)
    with pytest.raises(ValueError, match="same number of samples"):
        finetune_classifier(encoder, x, y[:-1], epochs=1, lr=1e-3, batch_size=4, device="cpu", seed=0)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        finetune_classifier(encoder, x, y, epochs=1, lr=0, batch_size=4, device="cpu", seed=0)
    with pytest.raises(RuntimeError, match="not fitted"):
        FinetunedClassifier(encoder).predict_proba(x)


def test_transfer_matrix_within_and_across(rng, encoder):
    """In dataset B the bright half marks the other class: a model from A must fail on B."""
    a = planted_volumes(rng, 40)
    x_b, y_b = planted_volumes(rng, 40)
    b = (x_b, 1 - y_b)
    res = transfer_matrix(encoder, {"A": a, "B": (*b, np.repeat(np.arange(20), 2))},
                          epochs=12, lr=3e-2, batch_size=10, device="cpu", seed=0, folds=2)
    table = res.table
    assert len(table) == 2 * 2 * 2
    assert set(map(tuple, table[["source", "target"]].values)) == {("A", "A"), ("A", "B"), ("B", "A"), ("B", "B")}
    within = table[table["source"] == table["target"]]
    across = table[table["source"] != table["target"]]
    assert within["balanced_accuracy"].min() > 0.8
    assert across["balanced_accuracy"].max() < 0.2
    assert (within["n_test"] == 20).all() and (across["n_test"] == 40).all()
    # Subject groups of B stay within one fold.
    assert set(table.loc[table["source"] == "B", "n_train"]) == {20}
    summary = res.summary.set_index(["source", "target"])
    expected = table.groupby(["source", "target"])["balanced_accuracy"].agg(["mean", "std"])
    for key, row in expected.iterrows():
        assert summary.loc[key, "mean"] == pytest.approx(row["mean"])
        assert summary.loc[key, "sd"] == pytest.approx(row["std"])
        assert summary.loc[key, "n_folds"] == 2
    preds = res.predictions
    assert len(preds) == 2 * (20 + 40) * 2
    ref = table.set_index(["source", "target", "fold"])["balanced_accuracy"]
    for key, d in preds.groupby(["source", "target", "fold"]):
        pred = (d["prob"].to_numpy() >= 0.5).astype(int)
        assert balanced_accuracy(d["y_true"].to_numpy(), pred) == pytest.approx(ref[key])
    ece = expected_calibration_error(preds["y_true"], preds["prob"], n_bins=5)
    assert 0.0 <= ece <= 1.0
