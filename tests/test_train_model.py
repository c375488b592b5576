"""Stage two, model side: weighting (Listing 2), presets (Tables 2-3), losses, MoME, small model, collaboration
(Listing 1), metrics, and the small-input preparation cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from adacomed.train.collab import CollaborativeModel
from adacomed.train.losses import contrastive_loss, task_loss
from adacomed.train.metrics import binary_metrics, choose_threshold
from adacomed.train.mome import MoME
from adacomed.train.presets import ABLATION_PRESETS, PRESETS, TaskPreset, ablation_preset, preset_for
from adacomed.train.small_model import SmallInputSpec, SmallModel, SmallModelConfig
from adacomed.train.weighting import (
    WEIGHTINGS,
    adaptive_weight,
    gaussian_weight,
    inverse_weight,
    learnable_weight,
    threshold_weight,
    weighting_warnings,
)


def _pair(weights: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    return float(weights[0]), float(weights[1])


# ----------------------------------------------------------------------------------------------- weighting
def test_inverse_weight_matches_listing_2_by_hand() -> None:
    sim, tau, alpha = 0.5, 0.59, 0.71
    inverse_loss = 1.0 / (alpha * (sim / tau) + 1e-6)
    large = 1.0 / (1.0 + math.exp(-sim))
    small = inverse_loss / (inverse_loss + 1.0)
    expected = (large / (large + small), small / (large + small))
    got = _pair(inverse_weight(torch.tensor(sim), temperature=tau, alpha=alpha))
    assert got == pytest.approx(expected, rel=1e-6)
    assert sum(got) == pytest.approx(1.0)
    assert got[0] == pytest.approx(0.49925, abs=1e-4)  # 0.62246 / (0.62246 + 0.62430): 1/(0.71*0.5/0.59)=1.6620


def test_gaussian_and_threshold_weight_by_hand() -> None:
    small = math.exp(-(0.5**2) / (2 * 0.84**2))
    assert _pair(gaussian_weight(torch.tensor(0.5), sigma=0.84)) == pytest.approx((1 - small, small), rel=1e-6)
    large = 0.5 + 0.5 * math.tanh(9.80 * (0.5 - 0.57))
    assert _pair(threshold_weight(torch.tensor(0.5), threshold=0.57, slope=9.80)) == pytest.approx(
        (large, 1 - large), rel=1e-6
    )
    # Listing 2's defaults (sigma 1, threshold 0.5, slope 10): at sim = threshold the split is even.
    assert _pair(threshold_weight(torch.tensor(0.5))) == pytest.approx((0.5, 0.5))


def test_learnable_weight_is_softmax() -> None:
    assert _pair(learnable_weight(torch.zeros(2))) == pytest.approx((0.5, 0.5))
    e = math.e
    assert _pair(learnable_weight(torch.tensor([1.0, 0.0]))) == pytest.approx((e / (e + 1), 1 / (e + 1)))


def test_adaptive_weight_uses_the_preset_and_fixed_ablations() -> None:
    preset = PRESETS["mortality"]
    sim = torch.tensor(0.5)
    assert _pair(adaptive_weight("inverse", sim, preset)) == _pair(inverse_weight(sim, 0.59, 0.71))
    assert _pair(adaptive_weight("gaussian", sim, preset)) == _pair(gaussian_weight(sim, 0.84))
    assert _pair(adaptive_weight("threshold", sim, preset)) == _pair(threshold_weight(sim, 0.57, 9.80))
    assert _pair(adaptive_weight("ensemble", sim, preset)) == (0.5, 0.5)
    assert _pair(adaptive_weight("small-only", sim, preset)) == (0.0, 1.0)
    assert _pair(adaptive_weight("large-only", sim, preset)) == (1.0, 0.0)
    with pytest.raises(ValueError, match="not one of"):
        adaptive_weight("median", sim, preset)
    assert WEIGHTINGS == ("learnable", "inverse", "gaussian", "threshold", "ensemble", "small-only", "large-only")


# ------------------------------------------------------------------------------------------------- presets
def test_presets_equal_table_2_and_3() -> None:
    table_2 = {  # lambda, d, tau, alpha, sigma, t, sl
        "mortality": (0.59, 2048, 0.59, 0.71, 0.84, 0.57, 9.80),
        "longstay": (0.50, 256, 0.50, 1.00, 1.00, 0.60, 10.00),
        "readmission": (0.67, 2048, 0.78, 0.41, 0.66, 0.94, 19.76),
        "vital12": (0.50, 128, 0.07, 1.00, 0.10, 0.15, 10.00),
    }
    fields = (
        "contrastive_weight",
        "proj_dim",
        "inverse_temperature",
        "inverse_alpha",
        "gaussian_sigma",
        "threshold",
        "threshold_slope",
    )
    assert set(PRESETS) == set(table_2)
    for task, values in table_2.items():
        assert tuple(getattr(PRESETS[task], f) for f in fields) == values
        assert preset_for(task) == PRESETS[task]
    fixed = (128, 1.0, 1.0, 0.2, 2.5, 10)
    assert tuple(getattr(ABLATION_PRESETS["lambda"], f) for f in fields[1:]) == fixed
    assert ABLATION_PRESETS["d"].contrastive_weight == 0.5
    assert tuple(getattr(ABLATION_PRESETS["d"], f) for f in fields[2:]) == fixed[1:]
    assert ablation_preset("d", 512).proj_dim == 512 and ablation_preset("lambda", 0.3).contrastive_weight == 0.3
    assert preset_for("my_own_label") == TaskPreset(0.5, 128, 1.0, 1.0, 1.0, 0.5, 10.0)


# -------------------------------------------------------------------------------------------------- losses
def _reference_infonce(large: np.ndarray, small: np.ndarray, temperature: float = 0.07):
    """Per-element loops, independent of the code under test: (sim, one-way loss, symmetric loss) per sample."""
    b = len(large)
    logits = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            cosine = large[i] @ small[j] / (np.linalg.norm(large[i]) * np.linalg.norm(small[j]))
            logits[i, j] = cosine / temperature
    sims, one_way, symmetric = [], [], []
    for i in range(b):
        exp_pos = math.exp(logits[i, i])
        sum_neg = sum(math.exp(logits[i, j]) for j in range(b) if j != i)
        row = -math.log(exp_pos / (exp_pos + sum_neg))  # the authors' -log(exp_pos / (exp_pos + sum_neg))
        col = -logits[i, i] + math.log(sum(math.exp(logits[j, i]) for j in range(b)))
        one_way.append(row)
        symmetric.append(0.5 * (row + col))
        sims.append(1.0 if b == 1 else exp_pos / (exp_pos + sum_neg / (b - 1)))
    return np.array(sims), np.array(one_way), np.array(symmetric)


def test_contrastive_loss_matches_per_element_loops() -> None:
    rng = np.random.default_rng(0)
    large, small = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    expected_sim, one_way, symmetric = _reference_infonce(large, small)
    sim, loss = contrastive_loss(torch.tensor(large), torch.tensor(small), temperature=0.07)
    np.testing.assert_allclose(loss.numpy(), one_way, rtol=1e-6)  # the default is one-way large -> small
    np.testing.assert_allclose(sim.numpy(), expected_sim, rtol=1e-6)  # B - 1 negatives in the mean
    sim_sym, loss_sym = contrastive_loss(torch.tensor(large), torch.tensor(small), symmetric=True)
    np.testing.assert_allclose(loss_sym.numpy(), symmetric, rtol=1e-6)
    torch.testing.assert_close(sim_sym, sim)  # sim is the large -> small row either way
    assert not np.allclose(one_way, symmetric)
    assert bool(((sim > 0) & (sim <= 1)).all())


def test_contrastive_loss_with_valid_rows_equals_those_rows_alone() -> None:
    rng = np.random.default_rng(2)
    large, small = torch.tensor(rng.normal(size=(6, 8))), torch.tensor(rng.normal(size=(6, 8)))
    valid = torch.tensor([True, False, True, True, False, True])
    for symmetric in (False, True):
        sim, loss = contrastive_loss(large, small, symmetric=symmetric, valid=valid)
        sim_alone, loss_alone = contrastive_loss(large[valid], small[valid], symmetric=symmetric)
        torch.testing.assert_close(sim[valid], sim_alone)
        torch.testing.assert_close(loss[valid], loss_alone)
        assert torch.equal(loss[~valid], torch.zeros(2, dtype=loss.dtype))
        assert torch.equal(sim[~valid], torch.ones(2, dtype=sim.dtype))
    lone = torch.tensor([False, True, False, False, False, False])
    sim, loss = contrastive_loss(large.requires_grad_(), small, valid=lone)
    assert float(sim[1].detach()) == 1.0 and float(loss.sum().detach()) == pytest.approx(0.0, abs=1e-6)
    loss.sum().backward()
    assert torch.isfinite(large.grad).all()


def test_contrastive_sim_is_stable_and_one_for_a_single_sample() -> None:
    aligned = torch.eye(4) * 50
    sim, loss = contrastive_loss(aligned, aligned, temperature=0.01)  # exp(100) would overflow float32
    assert torch.isfinite(sim).all() and torch.isfinite(loss).all()
    assert bool(((sim > 0) & (sim <= 1)).all()) and float(sim.min()) > 0.99
    sim_one, loss_one = contrastive_loss(torch.randn(1, 4), torch.randn(1, 4))
    assert float(sim_one) == 1.0 and float(loss_one) == pytest.approx(0.0, abs=1e-6)


def test_task_loss_is_per_sample_bce_with_pos_weight() -> None:
    logits, target = torch.tensor([0.3, -1.2]), torch.tensor([1.0, 0.0])
    expected = [-3.0 * math.log(1 / (1 + math.exp(-0.3))), -math.log(1 - 1 / (1 + math.exp(1.2)))]
    assert task_loss(logits, target, pos_weight=3.0).tolist() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------------- MoME
DIMS = {"xray": 12, "notes": 20, "timeseries": 8}


def _mome(seed: int = 0) -> MoME:
    torch.manual_seed(seed)
    return MoME(DIMS, d_small=32, n_heads=1).eval()  # 32 // 3 = 10: a final linear to 32


def _feats(batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch, dim, generator=generator) for name, dim in DIMS.items()}


def test_mome_has_one_expert_per_modality_subset() -> None:
    mome = _mome()
    assert mome.n_experts == 7 and len(mome.experts) == 7
    assert MoME({"a": 4, "b": 4}, d_small=8).n_experts == 3


def test_mome_ignores_missing_modality_rows() -> None:
    mome = _mome()
    feats = _feats(4)
    present = torch.tensor([[True, False, True], [True, True, True], [False, False, True], [True, True, False]])
    base = mome(feats, present)
    changed = {k: v.clone() for k, v in feats.items()}
    changed["notes"][0] = torch.randn(20) * 100
    changed["notes"][2] = float("nan")  # even NaN in a missing row must not leak
    changed["xray"][2] = torch.randn(12)
    out = mome(changed, present)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[[0, 2]], base[[0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(out[[1, 3]], base[[1, 3]])  # their rows did not change
    changed["notes"][1] = torch.randn(20) * 100  # sample 1 has notes: now it must change
    assert not torch.allclose(mome(changed, present)[1], base[1])


def test_mome_output_depends_on_every_present_modality() -> None:
    mome = _mome()
    feats = _feats(2)
    present = torch.ones(2, 3, dtype=torch.bool)
    base = mome(feats, present)
    for name in DIMS:
        changed = {k: v.clone() for k, v in feats.items()}
        changed[name][0] += 1.0
        out = mome(changed, present)
        assert not torch.allclose(out[0], base[0]), name
        torch.testing.assert_close(out[1], base[1])


def test_mome_router_gives_zero_weight_to_experts_with_missing_modalities() -> None:
    mome = _mome()
    present = torch.tensor([[True, False, True], [True, True, True]])
    mome(_feats(2), present)
    weights = mome.last_router_weights
    for e, subset in enumerate(mome.subsets):
        if 1 in subset:
            assert float(weights[0, e]) == 0.0
        else:
            assert float(weights[0, e]) > 0.0
    assert bool((weights[1] > 0).all())
    torch.testing.assert_close(weights.sum(1), torch.ones(2))


def test_mome_no_cross_batch_leakage_and_all_missing_is_zero() -> None:
    mome = _mome()
    feats = _feats(3)
    present = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    together = mome(feats, present)
    assert torch.equal(mome.last_empty, torch.tensor([False, False, True]))
    for i in range(3):
        alone = mome({k: v[i : i + 1] for k, v in feats.items()}, present[i : i + 1])
        torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-6)
    other = {k: v.clone() for k, v in feats.items()}
    other["xray"][1:] = torch.randn(2, 12)
    torch.testing.assert_close(mome(other, present)[0], together[0])
    assert torch.equal(together[2], torch.zeros(32))


def test_mome_backward_has_finite_gradients_with_missing_rows() -> None:
    mome = MoME(DIMS, d_small=30).train()
    feats = _feats(4)
    feats["xray"][0] = float("nan")
    present = torch.tensor([[False, True, True], [True, True, True], [False, False, False], [True, False, False]])
    mome(feats, present).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in mome.parameters() if p.grad is not None)


def test_mome_final_norm_is_per_token_and_missing_slots_stay_zero() -> None:
    torch.manual_seed(0)
    mome = MoME(DIMS, d_small=30, n_heads=1).eval()  # 30 // 3 = 10 per token, no final linear: slots are visible
    present = torch.tensor([[True, False, True], [True, True, True]])
    out = mome(_feats(2), present).view(2, 3, 10)
    assert torch.equal(out[0, 1], torch.zeros(10))  # the missing modality's slot is zero, not a normalised value
    slots = out[present]  # each present slot is normalised on its own (LayerNorm at init: mean 0, var 1)
    torch.testing.assert_close(slots.mean(-1), torch.zeros(len(slots)), atol=1e-5, rtol=0)
    torch.testing.assert_close(slots.var(-1, unbiased=False), torch.ones(len(slots)), atol=1e-3, rtol=0)


def test_mome_heads_must_divide_the_token_dimension() -> None:
    mome = MoME(DIMS, d_small=36, n_heads=4)  # 36 // 3 = 12
    assert mome.attention.num_heads == 4
    with pytest.raises(ValueError, match=r"mome_heads=5 .* d_small // M = 36 // 3 = 12"):
        MoME(DIMS, d_small=36, n_heads=5)
    model = CollaborativeModel(DIMS, 36, PRESETS["mortality"], "inverse", mome_heads=3)
    assert model.mome.attention.num_heads == 3


def test_threshold_at_or_above_one_is_warned() -> None:
    assert weighting_warnings("threshold", ABLATION_PRESETS["lambda"])  # Table 3: t = 2.5
    assert "small-only in effect" in weighting_warnings("threshold", ABLATION_PRESETS["d"])[0]
    assert weighting_warnings("threshold", PRESETS["mortality"]) == []
    assert weighting_warnings("inverse", ABLATION_PRESETS["lambda"]) == []


# --------------------------------------------------------------------------------------------- small model
def _small_batch(batch: int = 3) -> tuple[SmallModelConfig, dict[str, torch.Tensor]]:
    config = SmallModelConfig(
        inputs={
            "xray": SmallInputSpec(kind="image"),
            "notes": SmallInputSpec(kind="text", vocab_size=50),
            "timeseries": SmallInputSpec(kind="timeseries", n_variables=4),
            "tabular": SmallInputSpec(kind="tabular", n_categories=[3, 5], n_levels=[4, 3], n_numerical=1),
            "ct": SmallInputSpec(kind="vector", dim=16),
        },
        hidden_dim=32,
    )
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(batch, 10, dtype=torch.bool)
    mask[:, :6] = True
    ordinal = torch.tensor([[1, 0], [3, 2], [0, 1]])[:batch]  # level codes, 0 = missing
    values = torch.randn(batch, 12, 4, generator=generator)
    data = {
        "xray.image": torch.randint(0, 256, (batch, 256, 256), dtype=torch.uint8, generator=generator),
        "xray.present": torch.tensor([True] * (batch - 1) + [False]),
        "notes.tokens": torch.randint(1, 50, (batch, 10), generator=generator) * mask,
        "notes.mask": mask,
        "notes.present": torch.ones(batch, dtype=torch.bool),
        "timeseries.values": values,
        "timeseries.mask": values > 0,
        "timeseries.present": torch.ones(batch, dtype=torch.bool),
        "tabular.categorical": torch.tensor([[0, 4], [2, 1], [1, 0]])[:batch],
        "tabular.ordinal": ordinal,
        "tabular.numerical": torch.tensor([[0.5], [float("nan")], [-1.0]])[:batch],
        "tabular.present": torch.ones(batch, dtype=torch.bool),
        "ct.values": torch.randn(batch, 16, generator=generator),
        "ct.present": torch.tensor([False] + [True] * (batch - 1)),
    }
    return config, data


def test_small_model_forward_backward_every_kind() -> None:
    config, batch = _small_batch()
    torch.manual_seed(0)
    model = SmallModel(config)
    logits = model(batch)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    assert model.features(batch).shape == (3, 32)
    logits.sum().backward()
    for name, encoder in model.encoders.items():
        grads = [p.grad for p in encoder.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"no gradient reached the {name} encoder"
        assert all(torch.isfinite(g).all() for g in grads if g is not None)
    model.eval()
    batch["ct.values"][0] = float("nan")  # the missing vector's content is not read
    first = model(batch)
    batch["ct.values"][0] = 123.0
    torch.testing.assert_close(model(batch), first)


def test_image_crop_is_random_in_training_and_centred_in_eval() -> None:
    model = SmallModel(SmallModelConfig(inputs={"xray": SmallInputSpec(kind="image")}, hidden_dim=8))
    encoder = model.encoders["xray"]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1, 256, 256), dtype=torch.uint8, generator=generator).repeat(4, 1, 1)
    normalised = (images.float() / 255.0 - 0.5) / 0.25
    model.eval()
    torch.testing.assert_close(encoder.crop(images)[:, 0], normalised[:, 16:240, 16:240])
    model.train()
    torch.manual_seed(3)
    crops = encoder.crop(images)[:, 0]
    offsets = set()
    for b in range(4):
        matches = [
            (t, left)
            for t in range(33)
            for left in range(33)
            if torch.equal(crops[b], normalised[b, t : t + 224, left : left + 224])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1  # per-sample random offsets, not one shared crop


# -------------------------------------------------------------------------------------------------- collab
def _collab(weighting: str, small_head: torch.nn.Linear | None = None) -> CollaborativeModel:
    torch.manual_seed(0)
    return CollaborativeModel(
        DIMS, small_dim=32, preset=PRESETS["mortality"], weighting=weighting, small_head=small_head
    )


def test_shared_head_is_initialised_from_the_small_head() -> None:
    small = SmallModel(SmallModelConfig(inputs={"v": SmallInputSpec(kind="vector", dim=4)}, hidden_dim=32))
    model = _collab("inverse", small_head=small.head)
    assert torch.equal(model.head.weight, small.head.weight) and torch.equal(model.head.bias, small.head.bias)
    assert model.head.weight.data_ptr() != small.head.weight.data_ptr()  # a copy, not the same tensor
    assert model.large_proj.out_features == 2048 and model.small_proj.out_features == 2048


@pytest.mark.parametrize("weighting", ["inverse", "gaussian", "threshold", "ensemble"])
def test_collab_loss_follows_listing_1(weighting: str) -> None:
    model = _collab(weighting).eval()
    present = torch.ones(6, 3, dtype=torch.bool)
    out = model(_feats(6), present, torch.randn(6, 32))
    target = torch.tensor([1.0, 0, 0, 1, 0, 1])
    losses = model.loss(out, target)
    sims, one_way, _ = _reference_infonce(
        out.large_proj.detach().double().numpy(), out.small_proj.detach().double().numpy()
    )
    sim_mean = torch.tensor(sims.mean(), dtype=torch.float32)
    w_large, w_small = adaptive_weight(weighting, sim_mean, PRESETS["mortality"])
    logits = w_large * out.large_logits + w_small * out.small_logits
    task = task_loss(logits, target).mean()
    torch.testing.assert_close(losses["loss"], task + 0.59 * float(one_way.mean()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["task_loss"], task, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["contrastive_loss"].double(), torch.tensor(one_way.mean()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["logits"], logits, rtol=1e-5, atol=1e-6)
    assert float(losses["sim_mean"].detach()) == pytest.approx(sims.mean(), rel=1e-5)
    assert float(losses["w_large"].detach()) == pytest.approx(float(w_large), rel=1e-5)


def test_collab_symmetric_contrastive_is_opt_in() -> None:
    torch.manual_seed(0)
    model = CollaborativeModel(DIMS, 32, PRESETS["mortality"], "inverse", contrastive_symmetric=True).eval()
    out = model(_feats(5), torch.ones(5, 3, dtype=torch.bool), torch.randn(5, 32))
    _, _, symmetric = _reference_infonce(
        out.large_proj.detach().double().numpy(), out.small_proj.detach().double().numpy()
    )
    assert float(model.loss(out, torch.zeros(5))["contrastive_loss"].detach()) == pytest.approx(
        symmetric.mean(), rel=1e-5
    )


def test_collab_contrastive_and_sim_skip_samples_without_large_inputs() -> None:
    model = _collab("inverse").eval()
    present = torch.tensor([[True, True, True], [False, False, False], [True, False, True], [False] * 3, [True] * 3])
    small_feat = torch.randn(5, 32)
    out = model(_feats(5), present, small_feat)
    target = torch.tensor([1.0, 0, 1, 0, 1])
    losses = model.loss(out, target)
    rows = [0, 2, 4]
    sims, one_way, _ = _reference_infonce(
        out.large_proj.detach()[rows].double().numpy(), out.small_proj.detach()[rows].double().numpy()
    )
    assert float(losses["sim_mean"].detach()) == pytest.approx(sims.mean(), rel=1e-5)
    assert float(losses["contrastive_loss"].detach()) == pytest.approx(one_way.mean(), rel=1e-5)
    w_large, w_small = inverse_weight(torch.tensor(sims.mean(), dtype=torch.float32), 0.59, 0.71)
    fused = torch.where(present.any(1), w_large * out.large_logits + w_small * out.small_logits, out.small_logits)
    torch.testing.assert_close(losses["task_loss"], task_loss(fused, target).mean(), rtol=1e-5, atol=1e-6)  # all rows
    # Fewer than two samples with a large modality: no contrastive term, sim.mean() = 1.
    for lone in ([True, False, False, False, False], [False] * 5):
        only = present & torch.tensor(lone)[:, None]
        few = model.loss(model(_feats(5), only, small_feat), target)
        assert float(few["contrastive_loss"].detach()) == 0.0 and float(few["sim_mean"].detach()) == 1.0


def test_collab_inverse_weights_are_not_detached() -> None:
    model = _collab("inverse")
    out = model(_feats(4), torch.ones(4, 3, dtype=torch.bool), torch.randn(4, 32))
    losses = model.loss(out, torch.tensor([1.0, 0, 1, 0]))
    assert losses["w_large"].requires_grad  # Listing 1 passes sim.mean() as it is


def test_collab_learnable_uses_softmax_of_fusion_weights() -> None:
    model = _collab("learnable")
    with torch.no_grad():
        model.fusion_weights.copy_(torch.tensor([0.3, -0.2]))
    out = model(_feats(4), torch.ones(4, 3, dtype=torch.bool), torch.randn(4, 32))
    target = torch.tensor([1.0, 0, 1, 0])
    losses = model.loss(out, target)
    w = torch.softmax(torch.tensor([0.3, -0.2]), 0)
    logits = w[0] * out.large_logits + w[1] * out.small_logits
    _, one_way, _ = _reference_infonce(
        out.large_proj.detach().double().numpy(), out.small_proj.detach().double().numpy()
    )
    expected = task_loss(logits, target).mean() + 0.59 * float(one_way.mean())
    torch.testing.assert_close(losses["loss"], expected, rtol=1e-5, atol=1e-5)
    losses["loss"].backward()
    assert model.fusion_weights.grad is not None and model.fusion_weights.grad.abs().sum() > 0


def test_collab_sample_without_large_inputs_uses_its_small_logit() -> None:
    model = _collab("inverse").eval()
    present = torch.tensor([[True, True, False], [False, False, False]])
    out = model(_feats(2), present, torch.randn(2, 32))
    losses = model.loss(out, torch.tensor([1.0, 0.0]))
    assert torch.isfinite(losses["loss"])
    torch.testing.assert_close(losses["logits"][1], out.small_logits[1])
    assert torch.equal(out.large_feat[1], torch.zeros(32))


# ------------------------------------------------------------------------------------------------- metrics
def test_binary_metrics_equal_scikit_learn() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 0, 0, 1, 0])
    prob = np.array([0.1, 0.6, 0.8, 0.4, 0.2, 0.9, 0.55, 0.3, 0.7, 0.05])
    for threshold in (0.5, 0.65):
        pred = (prob >= threshold).astype(int)
        got = binary_metrics(y, prob, threshold=threshold)
        assert got["acc"] == pytest.approx(accuracy_score(y, pred))
        assert got["auroc"] == pytest.approx(roc_auc_score(y, prob))
        assert got["auprc"] == pytest.approx(average_precision_score(y, prob))
        assert got["mAP"] == pytest.approx(precision_score(y, pred, average="macro"))
        assert got["mAR"] == pytest.approx(recall_score(y, pred, average="macro"))
        assert got["mF1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert math.isnan(binary_metrics(np.zeros(3), np.array([0.1, 0.2, 0.3]))["auroc"])
    rng = np.random.default_rng(3)
    for _ in range(20):  # ties, imbalance, thresholds no sample reaches
        y = rng.integers(0, 2, 40)
        y[:2] = [0, 1]
        prob = np.round(rng.uniform(0, 1, 40), 1)
        threshold = float(rng.choice([0.05, 0.5, 0.95, 1.5]))
        pred = (prob >= threshold).astype(int)
        got = binary_metrics(y, prob, threshold=threshold)
        assert got["auroc"] == pytest.approx(roc_auc_score(y, prob))
        assert got["auprc"] == pytest.approx(average_precision_score(y, prob))
        assert got["mAP"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
        assert got["mAR"] == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
        assert got["mF1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))


def test_choose_threshold_maximises_macro_f1() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    prob = np.clip(0.35 * y + rng.uniform(0, 0.65, 60), 0, 1)
    best = choose_threshold(y, prob)
    scores = {t: f1_score(y, (prob >= t).astype(int), average="macro") for t in np.unique(prob)}
    assert f1_score(y, (prob >= best).astype(int), average="macro") == pytest.approx(max(scores.values()))
    assert binary_metrics(y, prob, best)["mF1"] >= binary_metrics(y, prob, 0.5)["mF1"]
