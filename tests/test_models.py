"""The four models honour the shared interface: shapes, penultimate features, causality, seeds.

Every model is built the way a run builds it: composed from ``conf/model/*.yaml`` with Hydra
and instantiated by :func:`build_model`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.nn import functional as F

from backdoor_study.config import CONF_DIR
from backdoor_study.data.summaries import per_variable_summaries
from backdoor_study.models import ClinicalModel, InputSpec, build_model
from backdoor_study.models.blocks import grid_summaries

MODELS = ("mlp", "lstm", "tcn", "tabtransformer")
STATIC_CAPABLE = ("mlp", "tabtransformer")
SPEC = InputSpec(
    n_steps=12, n_features=5, n_static_num=2, static_cat_cardinalities=(3, 4), n_classes=2
)
STATIC_ONLY = InputSpec(
    n_steps=0, n_features=0, n_static_num=4, static_cat_cardinalities=(), n_classes=3
)


@pytest.fixture(scope="module")
def model_cfgs() -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return {name: compose("train", overrides=[f"model={name}"]).model for name in MODELS}


def make_batch(spec: InputSpec, n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch in the preprocessed format, covering every categorical level."""
    g = torch.Generator().manual_seed(seed)
    t, f = spec.n_steps, spec.n_features
    cards = spec.static_cat_cardinalities
    codes = [torch.arange(n) % c for c in cards]  # every level, the unknown code 0 included
    return {
        "x": torch.randn(n, t, f, generator=g),
        "mask": (torch.rand(n, t, f, generator=g) < 0.7).float(),
        "static_num": torch.randn(n, spec.n_static_num, generator=g),
        "static_cat": torch.stack(codes, 1) if cards else torch.zeros(n, 0, dtype=torch.long),
    }


def build(model_cfgs: dict, name: str, spec: InputSpec = SPEC, seed: int = 0) -> ClinicalModel:
    torch.manual_seed(seed)
    return build_model(model_cfgs[name], spec)


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_forward_is_head_of_penultimate(model_cfgs, name):
    model = build(model_cfgs, name).eval()
    batch = make_batch(SPEC)
    with torch.no_grad():
        logits = model(batch)
        features = model.penultimate(batch)
        assert logits.shape == (16, SPEC.n_classes)
        assert features.shape == (16, model.penultimate_dim)
        assert isinstance(model.head, torch.nn.Linear)
        assert model.head.in_features == model.penultimate_dim
        torch.testing.assert_close(logits, model.head(features), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "spec",
    [
        InputSpec(12, 5, 0, (3, 4), 2),  # no numeric statics
        InputSpec(12, 5, 2, (), 2),  # no categorical statics
        InputSpec(12, 5, 0, (), 3),  # grid only, three classes
    ],
    ids=["no_static_num", "no_static_cat", "no_statics"],
)
def test_missing_static_blocks_are_handled(model_cfgs, name, spec):
    model = build(model_cfgs, name, spec).eval()
    out = model(make_batch(spec, n=4))
    assert out.shape == (4, spec.n_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=lstm", "model.bidirectional=true", "model.num_layers=2"],
        ["model=tcn", "model.kernel_size=2", "model.channels=[8,16]"],
        ["model=tabtransformer", "model.dim=8", "model.heads=2", "model.mlp_hidden=[]"],
        ["model=mlp", "model.hidden_sizes=[16]"],
    ],
    ids=lambda o: o[0],
)
def test_non_default_hyperparameters_build_and_run(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides).model
    model = build_model(cfg, SPEC).eval()
    batch = make_batch(SPEC, n=4)
    features = model.penultimate(batch)
    assert features.shape == (4, model.penultimate_dim)
    torch.testing.assert_close(model(batch), model.head(features), rtol=0, atol=0)


@pytest.mark.parametrize("name", STATIC_CAPABLE)
def test_static_only_dataset_works(model_cfgs, name):
    model = build(model_cfgs, name, STATIC_ONLY).eval()
    batch = make_batch(STATIC_ONLY, n=8)
    assert model(batch).shape == (8, 3)
    assert model.penultimate(batch).shape == (8, model.penultimate_dim)


@pytest.mark.parametrize("name", ["lstm", "tcn"])
def test_static_only_dataset_refused_by_sequence_models(model_cfgs, name):
    with pytest.raises(ValueError, match="static-only.*model=mlp or model=tabtransformer"):
        build(model_cfgs, name, STATIC_ONLY)


def test_tcn_is_causal(model_cfgs):
    model = build(model_cfgs, "tcn").eval()
    batch = make_batch(SPEC)
    t = 7
    changed = {**batch, "x": batch["x"].clone(), "mask": batch["mask"].clone()}
    changed["x"][:, t:] += 3.0
    changed["mask"][:, t:] = 1.0 - changed["mask"][:, t:]
    with torch.no_grad():
        before, after = model.temporal_features(batch), model.temporal_features(changed)
    torch.testing.assert_close(before[:, :, :t], after[:, :, :t], rtol=0, atol=0)
    assert not torch.equal(before[:, :, t:], after[:, :, t:])


@pytest.mark.parametrize("name", MODELS)
def test_mask_alone_changes_the_output(model_cfgs, name):
    model = build(model_cfgs, name).eval()
    batch = make_batch(SPEC)
    flipped = {**batch, "mask": 1.0 - batch["mask"]}
    with torch.no_grad():
        assert not torch.allclose(model(batch), model(flipped))


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_gives_identical_outputs(model_cfgs, name):
    batch = make_batch(SPEC)
    outputs = []
    for _ in range(2):
        model = build(model_cfgs, name, seed=123).train()  # dropout active, drawn from the seed
        torch.manual_seed(7)
        outputs.append(model(batch))
    assert torch.equal(outputs[0], outputs[1])
    other = build(model_cfgs, name, seed=124).eval()
    assert not torch.equal(other(batch), outputs[0])


@pytest.mark.parametrize("name", MODELS)
def test_fits_a_small_learnable_batch(model_cfgs, name):
    batch = make_batch(SPEC, n=64, seed=1)
    # Label: late values of variable 0 plus one categorical level, reachable by every model.
    signal = batch["x"][:, -4:, 0].mean(1) + (batch["static_cat"][:, 1] == 2).float()
    y = (signal > signal.median()).long()
    model = build(model_cfgs, name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        initial = F.cross_entropy(model.eval()(batch), y).item()
    model.train()
    for _ in range(50):
        opt.zero_grad()
        F.cross_entropy(model(batch), y).backward()
        opt.step()
    with torch.no_grad():
        final = F.cross_entropy(model.eval()(batch), y).item()
    assert final < 0.3 * initial, (initial, final)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter(model_cfgs, name):
    model = build(model_cfgs, name).train()
    batch = make_batch(SPEC, n=32)
    F.cross_entropy(model(batch), torch.arange(32) % 2).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_grid_summaries_match_numpy_reference_and_are_finite():
    batch = make_batch(SPEC, n=8)
    batch["mask"][0, :, 2] = 0.0  # a variable never observed in one stay
    batch["mask"][1, :, 3] = 0.0
    batch["mask"][1, 4, 3] = 1.0  # observed once: std 0
    x = batch["x"].requires_grad_(True)
    ours = grid_summaries(x, batch["mask"])
    reference, _ = per_variable_summaries(x.detach().numpy(), batch["mask"].numpy() > 0.5)
    np.testing.assert_allclose(ours.detach().numpy(), np.nan_to_num(reference), atol=1e-5)
    assert torch.isfinite(ours).all()
    ours.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", MODELS)
def test_bad_batches_are_refused_naming_the_key(model_cfgs, name):
    model = build(model_cfgs, name)
    wrong_width = make_batch(SPEC)
    wrong_width["x"] = wrong_width["x"][:, :, :3]
    with pytest.raises(ValueError, match=r"batch\['x'\] has shape"):
        model(wrong_width)
    bad_code = make_batch(SPEC)
    bad_code["static_cat"][0, 1] = 4  # cardinality 4: valid codes are 0..3
    with pytest.raises(ValueError, match=r"static_cat column 1 has codes \[4\]"):
        model(bad_code)
