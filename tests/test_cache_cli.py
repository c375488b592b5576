"""`adacomed-cache`: ls, info, verify (exit 1 naming each damaged shard) and diff, on caches committed here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adacomed.cache_schema import CacheDir, Fingerprint
from adacomed.cache_schema.cli import app

IDS = [f"s{i:02d}" for i in range(10)]


def _fingerprint(**changes) -> Fingerprint:
    values = dict(
        modality="xray",
        encoder="enc",
        encoder_version="1",
        weights="sha256:abc",
        pooling="cls",
        preprocessing={"crop": 224, "resize": 256},
        dim=8,
        input_hash="h",
    )
    values.update(changes)
    return Fingerprint(**values)


def _commit(root: Path, fingerprint: Fingerprint, finalize: bool = True, errors: bool = False) -> CacheDir:
    """Ten rows in three shards (4, 4, 2); ``errors`` records one failed sample in the last shard."""
    cache = CacheDir(root, fingerprint)
    plan = cache.initialise(len(IDS) + errors, rows_per_shard=4)
    values = np.random.default_rng(0).normal(size=(len(IDS), 8)).astype(np.float32)
    for index in range(plan.n_shards if finalize else plan.n_shards - 1):
        ids = plan.ids_of(IDS, index)
        failed = [{"sample_id": "s99", "stage": "read", "reason": "image file not found: s99.png"}]
        rows = values[[IDS.index(s) for s in ids]]
        cache.commit_shard(plan, index, ids, {"embeddings": rows}, failed if errors and index == 2 else [])
    if finalize:
        assert cache.finalize(plan) is not None
    return cache


def _shard_file(cache: CacheDir, index: int) -> Path:
    (path,) = cache.shards_dir.glob(f"shard-{index:05d}-of-00003.*.h5")
    return path


def _invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture()
def caches(tmp_path: Path) -> tuple[Path, CacheDir, CacheDir, CacheDir]:
    """A complete cache, one of another storage dtype (with an error), and a partial one of another modality."""
    root = tmp_path / "cache"
    complete = _commit(root, _fingerprint())
    other = _commit(root, _fingerprint(storage_dtype="float32"), errors=True)
    partial = _commit(root, _fingerprint(modality="notes", encoder="text-enc"), finalize=False)
    return root, complete, other, partial


def test_ls_lists_every_cache_with_its_status(caches) -> None:
    root, complete, other, partial = caches
    result = _invoke("ls", root)
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[3].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 8}
    assert set(lines) == {complete.fingerprint.key, other.fingerprint.key, partial.fingerprint.key}
    cells = {key: [cell.strip() for cell in line.split("│")[1:-1]] for key, line in lines.items()}
    assert cells[complete.fingerprint.key] == ["xray", "enc", complete.fingerprint.key, "complete", "10", "3/3", "0"]
    assert cells[other.fingerprint.key][3:] == ["complete", "10", "3/3", "1"]
    assert cells[partial.fingerprint.key][:2] == ["notes", "text-enc"]
    assert cells[partial.fingerprint.key][3:6] == ["partial", "8", "2/3"]


def test_info_shows_rows_dtype_fingerprint_and_errors(caches) -> None:
    _, complete, other, partial = caches
    result = _invoke("info", other.path)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"xray / enc / {other.fingerprint.key}" in text and "status: complete" in text and "rows: 10" in text
    assert "array embeddings: per-sample shape (8,), dtype float32" in text
    assert '"storage_dtype": "float32"' in text
    assert "errors: 1" in text and "s99" in text and "image file not found" in text
    assert "status: partial (not finalised)" in _invoke("info", partial.path).stdout
    assert "dtype float16" in _invoke("info", complete.path).stdout


def test_verify_exits_1_naming_each_damaged_shard(caches) -> None:
    root, complete, other, partial = caches
    healthy = _invoke("verify", root)
    assert healthy.exit_code == 0, healthy.output
    assert healthy.stdout.count("ok ") == 3 and "not finalised" in healthy.stdout  # partial: a note, not damage

    flipped, truncated = _shard_file(complete, 0), _shard_file(complete, 2)
    data = bytearray(flipped.read_bytes())
    data[-5] ^= 0xFF  # same size, other bytes: only the checksum can tell
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-16])
    one_line = " ".join(_invoke("verify", complete.path).stdout.split())  # rich may wrap long paths
    for target in (complete.path, root):
        result = _invoke("verify", target)
        assert result.exit_code == 1, result.output
        out = "".join(result.stdout.split())  # paths unwrapped
        assert flipped.name in out and truncated.name in out
        assert _shard_file(complete, 1).name not in out
    assert "xxh3_64" in one_line and "commit record says" in one_line
    assert _invoke("verify", other.path).exit_code == 0  # the damage is named where it is, nowhere else


def test_diff_names_the_fields_that_differ(caches) -> None:
    _, complete, other, partial = caches
    result = _invoke("diff", complete.path, other.path)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines() == ['storage_dtype: "float16" -> "float32"']
    lines = _invoke("diff", complete.path, partial.path).stdout.strip().splitlines()
    assert lines == ['encoder: "enc" -> "text-enc"', 'modality: "xray" -> "notes"']
    assert _invoke("diff", complete.path, complete.path).stdout.strip() == "identical fingerprints"
    fingerprint = json.loads((complete.path / "fingerprint.json").read_text())
    assert fingerprint["storage_dtype"] == "float16"
