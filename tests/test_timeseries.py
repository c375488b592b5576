"""EHR time series: windowed grids from .npz and long tables, MOIRAI (parity with uni2ts) and Fracast-0."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from adacomed.extract.encoders import TINY_RANDOM, create_encoder
from adacomed.extract.encoders.moirai import auto_patch_size, tokenize
from adacomed.extract.errors import ExtractError, InputError, WeightsError
from adacomed.extract.readers import create_reader
from adacomed.extract.readers.timeseries import TimeSeries


def require_package(module: str, how: str) -> None:
    """Skip when an optional package is absent on a user's machine; under CI its absence is a failure."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed but CI is set: make test installs it ({how})")
        pytest.skip(f"{module} is not installed ({how})")


def write_npz(path: Path, values: np.ndarray, hours: np.ndarray, names: list[str], **extra: np.ndarray) -> Path:
    np.savez(path, values=values.astype(np.float32), hours=hours.astype(np.float32), variables=np.array(names), **extra)
    return path


# ---------------------------------------------------------------------------------------------- the reader
def test_npz_grid_is_cut_to_the_window_and_binned(tmp_path: Path) -> None:
    hours = np.arange(60, dtype=np.float32)  # 60 hourly rows; the window keeps the first 48
    values = np.stack([hours, np.full(60, np.nan)], axis=1)
    values[::3, 1] = 7.0
    path = write_npz(tmp_path / "a.npz", values, hours, ["ramp", "every3"])
    series = create_reader("timeseries").read(path)
    assert series.values.shape == (48, 2) and series.variables == ("ramp", "every3") and series.step_hours == 1.0
    np.testing.assert_array_equal(series.values[:, 0], np.arange(48))
    np.testing.assert_array_equal(series.observed[:, 1], np.arange(48) % 3 == 0)
    assert (series.values[~series.observed] == 0).all()  # unobserved cells hold 0, the mask says which
    binned = create_reader("timeseries", window_hours=12, step_hours=4).read(path)
    np.testing.assert_array_equal(binned.values[:, 0], [1.5, 5.5, 9.5])  # the mean of each 4 h bin
    assert binned.observed[:, 1].all() and binned.hours.tolist() == [0.0, 4.0, 8.0]


def test_long_tables_per_sample_and_cohort_wide(tmp_path: Path) -> None:
    rows = pd.DataFrame(
        {
            "sample": ["s1", "s1", "s1", "s2", "s2"],
            "time": [0.5, 0.7, 50.0, 3.0, 4.2],
            "variable": ["hr", "hr", "hr", "sbp", "hr"],
            "value": [80.0, 90.0, 60.0, 120.0, 99.0],
        }
    )
    rows[rows["sample"] == "s1"].drop(columns="sample").to_csv(tmp_path / "s1.csv", index=False)
    per_sample = create_reader("timeseries").read(tmp_path / "s1.csv")
    assert per_sample.variables == ("hr",) and per_sample.observed.sum() == 1 and per_sample.values[0, 0] == 85.0
    rows.to_parquet(tmp_path / "events.parquet")
    cohort = create_reader("timeseries", table=str(tmp_path / "events.parquet"))
    s2 = cohort.read("s2")
    assert s2.variables == ("sbp", "hr") and s2.values[3, 0] == 120.0 and s2.values[4, 1] == 99.0
    with pytest.raises(InputError, match="sample 's9' has no rows in events.parquet"):
        cohort.read("s9")
    assert "events.parquet:xxh3:" in cohort.parameters()["table"]
    stamped = rows.assign(time=pd.Timestamp("2150-01-01") + pd.to_timedelta(rows["time"], unit="h"))
    stamped[stamped["sample"] == "s1"].to_csv(tmp_path / "stamped.csv", index=False)
    read = create_reader("timeseries").read(tmp_path / "stamped.csv")  # datetimes count from the first record
    assert read.observed.sum() == 1 and read.values[0, 0] == 85.0


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty_window", "no observation in the first 48 h"),
        ("inf", "variable 'b' has a non-finite value at 2 h"),
        ("nan_observed", "variable 'a' has a non-finite value at 1 h"),
        ("nan_row", "variable 'hr' has a missing or non-finite value at 1 h"),
        ("shape", "are not"),
        ("no_file", "does not exist"),
    ],
)
def test_bad_series_are_named_per_sample_errors(tmp_path: Path, case: str, message: str) -> None:
    hours = np.arange(4, dtype=np.float32)
    values = np.ones((4, 2))
    pointer = tmp_path / f"{case}.npz"
    if case == "empty_window":
        write_npz(pointer, values, hours + 100, ["a", "b"])
    elif case == "inf":
        values[2, 1] = np.inf
        write_npz(pointer, values, hours, ["a", "b"])
    elif case == "nan_observed":
        values[1, 0] = np.nan
        write_npz(pointer, values, hours, ["a", "b"], observed=np.ones((4, 2), bool))
    elif case == "nan_row":
        pointer = tmp_path / "rows.csv"
        pointer.write_text("time,variable,value\n0,hr,80\n1,hr,\n")
    elif case == "shape":
        write_npz(pointer, values, hours[:3], ["a", "b"])
    with pytest.raises(InputError, match=message):
        create_reader("timeseries").read(pointer)


def test_reader_options_are_checked() -> None:
    with pytest.raises(ExtractError, match="window_hour.*did you mean 'window_hours'"):
        create_encoder("moirai-large", weights=TINY_RANDOM, window_hour=24)
    with pytest.raises(ExtractError, match="step_hours 60.0 is longer than window_hours 48.0"):
        create_reader("timeseries", step_hours=60)
    encoder = create_encoder("moirai-large", weights=TINY_RANDOM, window_hours=24)
    assert encoder.fingerprint("timeseries", "h").preprocessing["window_hours"] == 24.0


# -------------------------------------------------------------------------------------------------- MOIRAI
def grid(values: np.ndarray, observed: np.ndarray | None = None, step: float = 1.0) -> TimeSeries:
    observed = ~np.isnan(values) if observed is None else observed
    names = tuple(f"v{i}" for i in range(values.shape[1]))
    hours = np.arange(len(values)) * step
    return TimeSeries(np.nan_to_num(values).astype(np.float32), observed, hours, names, step)


def test_tokens_follow_uni2ts_packing() -> None:
    values = np.full((48, 3), np.nan)
    values[20:, 0] = np.arange(28)
    values[5, 2] = 9.0  # variable 1 is never observed: dropped
    tokens = tokenize(grid(values), patch_size=32, max_patch=128)
    assert tokens["target"].shape == (4, 128)  # 2 variables x 2 patches (48 steps left-padded to 64)
    np.testing.assert_array_equal(tokens["variate_id"], [0, 0, 1, 1])
    np.testing.assert_array_equal(tokens["time_id"], [0, 1, 0, 1])
    assert not tokens["observed_mask"][0].any()  # variable 0: padding 16 + steps 0..15, none observed
    np.testing.assert_array_equal(tokens["target"][1, :32], np.r_[np.zeros(4), np.arange(28)])
    assert tokens["observed_mask"][1, 4:32].all() and not tokens["observed_mask"][1, 32:].any()
    assert tokens["observed_mask"][2].sum() == 1 and tokens["target"][2, 16 + 5] == 9.0
    late = np.full((48, 1), np.nan)
    late[20:, 0] = 1.0  # nothing in the first patch: time ids count from the first observed patch, as uni2ts
    np.testing.assert_array_equal(tokenize(grid(late), 16, 128)["time_id"], [0, 0, 1])


def test_patch_size_follows_the_frequency() -> None:
    sizes = (8, 16, 32, 64, 128)
    assert auto_patch_size(1.0, sizes) == 32  # hourly: 32-64
    assert auto_patch_size(5 / 60, sizes) == 32  # 5-minutely: 32-128
    assert auto_patch_size(1 / 3600, sizes) == 64  # secondly: 64-128
    assert auto_patch_size(24.0, sizes) == 16  # daily
    assert auto_patch_size(24.0 * 30, sizes) == 8  # monthly
    encoder = create_encoder("moirai-large", weights=TINY_RANDOM, patch_size=8)
    assert encoder.preprocessing()["patch_size"] == 8
    with pytest.raises(ExtractError, match="patch_size 12"):
        create_encoder("moirai-large", weights=TINY_RANDOM, patch_size=12)


def test_moirai_pools_observed_tokens_and_ignores_batch_company() -> None:
    encoder = create_encoder("moirai-large", weights=TINY_RANDOM)
    rng = np.random.default_rng(0)
    short = np.full((48, 2), np.nan)
    short[30:, 0] = rng.normal(size=18)
    long = rng.normal(size=(48, 5))
    samples = [encoder.prepare(grid(short)), encoder.prepare(grid(long))]
    both = encoder.encode_samples(samples, 2).embeddings
    alone = encoder.encode_samples(samples[:1], 1).embeddings
    np.testing.assert_allclose(alone, both[:1], atol=1e-5)
    batch = encoder.collate(samples[:1])
    with torch.inference_mode():
        tokens = encoder.model(
            *(batch[k] for k in ("target", "observed_mask", "sample_id", "time_id", "variate_id", "patch_size"))
        )
    np.testing.assert_allclose(alone[0], tokens[0, 1].numpy(), atol=1e-6)  # only token 1 holds observations
    with pytest.raises(InputError, match="tokens exceed"):
        encoder.prepare(grid(rng.normal(size=(48, 300))))


def _uni2ts_module() -> types.ModuleType:
    """uni2ts's own ``model/moirai/module.py``, loaded without its package ``__init__`` (lightning, gluonts) and
    with a stand-in for ``uni2ts.distribution`` (its PyTree annotations import jax). The distribution head is not
    on the encoder path; everything that is (scaler, in_proj, transformer, attention, rotary) is uni2ts's code."""
    require_package("uni2ts", "pip install --no-deps uni2ts==2.0.0; pip install einops jaxtyping hydra-core")
    import uni2ts
    from torch import nn

    class Head(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.proj = nn.Linear(dim, 2)

        def forward(self, reprs: torch.Tensor, patch_size: torch.Tensor) -> torch.Tensor:
            return self.proj(reprs)

    class DistributionOutput:
        def get_param_proj(self, d_model: int, patch_sizes: tuple[int, ...]) -> nn.Module:
            return Head(d_model)

        def distribution(self, params: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return params

    stand_in = types.ModuleType("uni2ts.distribution")
    stand_in.DistributionOutput = DistributionOutput
    saved = sys.modules.get("uni2ts.distribution")
    sys.modules["uni2ts.distribution"] = stand_in
    try:
        path = Path(uni2ts.__file__).parent / "model" / "moirai" / "module.py"
        spec = importlib.util.spec_from_file_location("_uni2ts_moirai_module", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["uni2ts.distribution"]
        else:
            sys.modules["uni2ts.distribution"] = saved
    module.StandInOutput = DistributionOutput
    return module


def test_moirai_matches_uni2ts_and_loads_its_checkpoint_strictly(tmp_path: Path) -> None:
    module = _uni2ts_module()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = module.MoiraiModule(
            distr_output=module.StandInOutput(), d_model=128, num_layers=2, patch_sizes=(8, 16, 32, 64, 128),
            max_seq_len=512, attn_dropout_p=0.0, dropout_p=0.0, scaling=True,
        ).eval()  # fmt: skip
        with torch.no_grad():  # move every weight off its initial value (norms start at 1, mask at N(0, 1))
            for parameter in reference.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.2)
    reference.save_pretrained(tmp_path / "ckpt")  # config.json + model.safetensors, the released layout
    assert "param_proj.proj.weight" in _safetensor_keys(tmp_path / "ckpt")
    ours = create_encoder("moirai-large", weights=str(tmp_path / "ckpt"))
    assert ours.embed_dim == 128

    rng = np.random.default_rng(1)
    sparse = rng.normal(50, 10, size=(48, 4))
    sparse[rng.random((48, 4)) < 0.6] = np.nan
    grids = [grid(sparse), grid(rng.normal(size=(48, 3)) * 1000), grid(rng.normal(size=(200, 2)), step=1 / 12)]
    samples = [ours.prepare(g) for g in grids]
    batch = ours.collate(samples)
    captured: dict[str, torch.Tensor] = {}
    reference.encoder.register_forward_hook(lambda _m, _i, out: captured.__setitem__("tokens", out))
    with torch.inference_mode():
        reference(
            batch["target"], batch["observed_mask"], batch["sample_id"], batch["time_id"], batch["variate_id"],
            torch.zeros_like(batch["sample_id"], dtype=torch.bool), batch["patch_size"],
        )  # fmt: skip
    keep = (batch["observed_mask"].any(-1) & (batch["sample_id"] == 1)).unsqueeze(-1).float()
    expected = (captured["tokens"] * keep).sum(1) / keep.sum(1)
    np.testing.assert_allclose(ours.encode_samples(samples, 3).embeddings, expected.numpy(), rtol=1e-4, atol=1e-4)

    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text((tmp_path / "ckpt" / "config.json").read_text())
    save_file(
        {k: v for k, v in tensors.items() if k != "encoder.layers.1.ffn.fc2.weight"},
        str(tmp_path / "bad" / "model.safetensors"),
    )
    with pytest.raises(WeightsError, match=r"1 missing \(e\.g\. \['encoder\.layers\.1\.ffn\.fc2\.weight'\]\)"):
        create_encoder("moirai-large", weights=str(tmp_path / "bad")).build_model()
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**config, "num_layers": 1}))
    save_file(tensors, str(tmp_path / "bad" / "model.safetensors"))
    with pytest.raises(WeightsError, match="unexpected"):
        create_encoder("moirai-large", weights=str(tmp_path / "bad")).build_model()


def _safetensor_keys(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return set(handle.keys())


def test_moirai_needs_local_weights() -> None:
    with pytest.raises(WeightsError, match="config.json and model.safetensors"):
        create_encoder("moirai-large", weights="/nonexistent/moirai")


# ------------------------------------------------------------------------------------------------ Fracast-0
def test_fracast_real_weights_embed_series(tmp_path: Path) -> None:
    require_package("fracast", "pip install fracast")
    encoder = create_encoder("fracast-0")
    assert encoder.weights_identity().startswith("sha256:") and encoder.embed_dim == 64
    rng = np.random.default_rng(0)
    hours = np.arange(48.0)
    rising = np.stack([70 + hours + rng.normal(0, 1, 48), 36.5 + 0.02 * hours], axis=1)
    wave = np.stack([80 + 10 * np.sin(hours / 3), 37 + rng.normal(0, 0.3, 48)], axis=1)
    wave[rng.random((48, 2)) < 0.5] = np.nan
    samples = [encoder.prepare(grid(rising)), encoder.prepare(grid(wave))]
    both = encoder.encode_samples(samples, 2).embeddings
    alone = encoder.encode_samples(samples[1:], 1).embeddings
    assert both.shape == (2, 64) and np.isfinite(both).all()
    np.testing.assert_allclose(alone[0], both[1], atol=1e-5)
    assert not np.allclose(both[0], both[1], atol=1e-3)
    shifted = encoder.encode_samples([encoder.prepare(grid(rising * 2 + 5))], 1).embeddings
    np.testing.assert_allclose(shifted[0], both[0], atol=1e-4)  # min-max normalised: a shape embedding
