"""embed / predict_age against direct forward passes; run directories round-trip a model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brainkit.models import build_model
from brainkit.train import (
    embed,
    embed_and_predict,
    load_checkpoint,
    load_model,
    model_config,
    predict_age,
    read_run_config,
    save_model,
)

WIDTHS = (4, 8, 16, 32)


@pytest.fixture
def contrastive():
    torch.manual_seed(0)
    model = build_model("contrastive", widths=WIDTHS, head_dims=(16, 8))
    model.train()
    with torch.no_grad():  # non-trivial running statistics, so eval mode is visible
        model(torch.rand(8, 1, 16, 16, 16) * 3)
    return model


def test_embed_equals_eval_forward_in_any_batching(contrastive, toy_cohort):
    idx = np.array([5, 0, 17, 3, 9])
    z = embed(contrastive, toy_cohort, idx, batch_size=2, layer="projection")
    assert z.shape == (5, 8) and z.dtype == np.float32
    assert contrastive.training  # mode restored
    contrastive.eval()
    with torch.no_grad():
        x = torch.from_numpy(toy_cohort.images(idx)).unsqueeze(1)
        direct = contrastive(x).numpy()
        features = contrastive.encoder(x).numpy()
    np.testing.assert_allclose(z, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embed(contrastive, toy_cohort, idx, batch_size=5,
                                     layer="projection"), z, rtol=1e-5, atol=1e-6)
    # the default is the encoder's pooled features, what every probe reads
    np.testing.assert_allclose(embed(contrastive, toy_cohort, idx), features,
                               rtol=1e-5, atol=1e-6)
    assert embed(contrastive, toy_cohort, layer="projection").shape == (len(toy_cohort), 8)


def test_embed_and_predict_age_refuse_bad_input(contrastive, toy_cohort):
    with pytest.raises(ValueError, match="batch_size"):
        embed(contrastive, toy_cohort, batch_size=0)
    with pytest.raises(ValueError, match="outside"):
        embed(contrastive, toy_cohort, [0, 1000])
    with pytest.raises(ValueError, match="layer"):
        embed(contrastive, toy_cohort, [0], layer="logits")
    with pytest.raises(TypeError, match="RegressionModel"):
        predict_age(contrastive, toy_cohort)
    with pytest.raises(TypeError, match="Cohort"):
        embed(contrastive, np.zeros((2, 16, 16, 16)))


def test_predict_age_and_regression_embeddings(toy_cohort):
    torch.manual_seed(0)
    reg = build_model("regression", widths=WIDTHS, target_mean=50.0, target_scale=10.0)
    np.testing.assert_array_equal(predict_age(reg, toy_cohort, [0, 1, 2]), [50.0] * 3)
    torch.nn.init.normal_(reg.head.weight, std=0.1)
    reg.eval()
    with torch.no_grad():
        x = torch.from_numpy(toy_cohort.images([4, 2])).unsqueeze(1)
        np.testing.assert_allclose(predict_age(reg, toy_cohort, [4, 2], batch_size=1),
                                   reg(x).numpy(), rtol=1e-5)
        # a regression model embeds with its encoder by default (it has no projection)
        np.testing.assert_allclose(embed(reg, toy_cohort, [4, 2]), reg.encoder(x).numpy(),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["contrastive", "regression"])
def test_embed_and_predict_is_both_passes_in_one(kind, contrastive, toy_cohort):
    if kind == "contrastive":
        model, output = contrastive, lambda m, i, b: embed(m, toy_cohort, i, batch_size=b,
                                                            layer="projection")
    else:
        torch.manual_seed(1)
        model = build_model("regression", widths=WIDTHS, target_mean=50.0, target_scale=10.0)
        torch.nn.init.normal_(model.head.weight, std=0.1)
        output = lambda m, i, b: predict_age(m, toy_cohort, i, batch_size=b)  # noqa: E731
    idx = np.array([3, 0, 11, 7, 2])
    features, out = embed_and_predict(model, toy_cohort, idx, batch_size=2)
    np.testing.assert_array_equal(features, embed(model, toy_cohort, idx, batch_size=2))
    np.testing.assert_array_equal(out, output(model, idx, 2))
    assert out.dtype == (np.float32 if kind == "contrastive" else np.float64)
    assert out.shape == ((5, 8) if kind == "contrastive" else (5,))


@pytest.mark.parametrize("kind", ["contrastive", "regression"])
def test_save_and_load_model_roundtrip(kind, toy_cohort, tmp_path):
    torch.manual_seed(1)
    model = build_model(kind, widths=WIDTHS, head_dims=(16, 8), norm="group",
                        target_mean=33.0, target_scale=7.0)
    save_model(model, tmp_path, extra={"note": "hand-made"})
    config = read_run_config(tmp_path)
    assert config["model"] == model_config(model) and config["note"] == "hand-made"
    assert config["model"]["norm"] == "group"
    loaded = load_model(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(FileExistsError, match="overwrite"):
        save_model(model, tmp_path)
    with pytest.raises(ValueError, match="reserved|'model'"):
        save_model(model, tmp_path / "other", extra={"model": 1})


def test_run_directory_errors(tmp_path, contrastive):
    with pytest.raises(FileNotFoundError, match="not a brainkit run directory"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_run_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "brainkit-run", "model": None}))
    with pytest.raises(ValueError, match="no 'model' entry"):
        load_model(tmp_path)
    with pytest.raises(TypeError, match="ContrastiveModel"):
        model_config(torch.nn.Linear(2, 2))


def test_load_model_reads_a_training_run(contrastive, toy_cohort, tmp_path):
    from brainkit.train import fit

    fit(contrastive, toy_cohort, "yaware", indices=np.arange(8), out_dir=tmp_path, epochs=1,
        batch_size=8, progress=False)
    loaded = load_model(tmp_path)
    state = load_checkpoint(tmp_path)["model"]
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    np.testing.assert_allclose(embed(loaded, toy_cohort, [0, 1]),
                               embed(contrastive, toy_cohort, [0, 1]), rtol=1e-6)


def test_load_model_refuses_nonfinite_weights(contrastive, tmp_path):
    from brainkit.errors import NonFiniteError
    from brainkit.train import atomic_save

    save_model(contrastive, tmp_path / "m")
    ckpt = load_checkpoint(tmp_path / "m")
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name][0] = float("inf")
    atomic_save(ckpt, tmp_path / "m" / "checkpoint.pt")
    with pytest.raises(NonFiniteError, match=rf"1 of \d+ weight tensor\(s\) hold NaN or inf "
                                             rf"\(e.g. \['{name}'\]\)"):
        load_model(tmp_path / "m")


def test_a_loaded_model_refuses_a_cohort_on_another_grid(contrastive, toy_cohort, make_planted,
                                                         tmp_path):
    from brainkit.errors import InputError
    from brainkit.train import fit

    fit(contrastive, toy_cohort, "yaware", indices=np.arange(8), out_dir=tmp_path, epochs=1,
        batch_size=8, progress=False)
    model = load_model(tmp_path)
    assert model.trained_grid_shape == (16, 16, 16)
    assert embed(model, toy_cohort, [0, 1], layer="projection").shape == (2, 8)
    other = make_planted(4, shape=(12, 12, 12))
    with pytest.raises(InputError, match="trained on images of grid 16x16x16 but the cohort's "
                                         "grid is 12x12x12"):
        embed(model, other)
    assert embed(contrastive, other, layer="projection").shape == (4, 8), \
        "a model without a record is not checked"


def test_embed_names_images_whose_output_is_not_finite(contrastive, toy_cohort):
    from brainkit.errors import NonFiniteError

    with torch.no_grad():  # finite weights whose outputs overflow
        for layer in contrastive.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(1e38)
    with pytest.raises(NonFiniteError, match="output is NaN or inf for images .*img000.*"
                                             "although their voxels are finite"):
        embed(contrastive, toy_cohort, [0, 1], layer="projection")  # the head overflows
