"""What stage two's data handling costs, on the CPU, at MIMIC-IV-MM size (a script, not a test).

(a) One co-training epoch through the trainer's data path (embeddings loaded from a real cache written with
    ``CacheDir``, held as tensors, batches gathered by index) against the same model's forward + backward on the
    same batches already materialised in memory. Target: data handling adds at most 10 %.
(b) A small-model epoch from prepared inputs (uint8 X-rays 256 x 256 cropped on the fly, note tokens,
    time-series grids) through the trainer's gathers, against the same model on the same batches pre-made.
    Target: at most 20 %.
Peak memory of loading the cache (in a fresh process: tracemalloc's peak; VmHWM minus the RSS before loading is
reported too) against the cached arrays' size. Target: at most 2x.

    .venv/bin/python benchmarks/train_epoch.py            # 11,483 samples, full epochs (slow on a laptop CPU)
    .venv/bin/python benchmarks/train_epoch.py --quick    # 2,000 samples, 5 small-model steps

Writes ``benchmarks/results/train_epoch.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from adacomed.cache_schema import CacheDir, Fingerprint, Manifest, ManifestInfo, ModalitySource
from adacomed.train.collab import CollaborativeModel
from adacomed.train.config import TrainConfig
from adacomed.train.data import TaskData, load_large
from adacomed.train.loop import batches, cotrain_epoch, epoch_generator
from adacomed.train.presets import preset_for
from adacomed.train.small_model import SmallInputSpec, SmallModel, SmallModelConfig

LARGE_DIMS = {"xray": 1536, "notes": 5120, "timeseries": 1024}  # DINOv2 ViT-g, Me-LLaMA-13B, MOIRAI-large
SMALL_DIM = 256
RESULTS = Path(__file__).resolve().parent / "results" / "train_epoch.json"


def make_cohort(root: Path, n: int, seed: int = 0) -> tuple[Manifest, list[str]]:
    """A manifest with three text-pointer modalities and their float16 caches (70/15/15 split)."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i:06d}" for i in range(n)]
    split = np.where(rng.random(n) < 0.7, "train", np.where(rng.random(n) < 0.5, "val", "test"))
    table = pd.DataFrame(
        {
            "sample_id": ids,
            "subject_id": ids,
            "split": split,
            **{f"{m}_ref": [f"{m}-{i}" for i in range(n)] for m in LARGE_DIMS},
        }
    )
    info = ManifestInfo(
        cohort="benchmark", modalities={m: ModalitySource(column=f"{m}_ref", kind="text") for m in LARGE_DIMS}
    )
    manifest = Manifest(table, info)
    manifest.write(root / "manifest.parquet")
    for modality, dim in LARGE_DIMS.items():
        fp = Fingerprint(
            modality=modality,
            encoder="synthetic",
            encoder_version="1",
            weights="bench",
            pooling="none",
            dim=dim,
            input_hash=manifest.input_hash(modality),
        )
        cache = CacheDir(root / "cache", fp)
        plan = cache.initialise(n)
        order = sorted(ids)
        for index in range(plan.n_shards):
            shard_ids = plan.ids_of(order, index)
            values = rng.standard_normal((len(shard_ids), dim), dtype=np.float32)
            cache.commit_shard(plan, index, shard_ids, {"embeddings": values})
        cache.finalize(plan)
    return Manifest.read(root / "manifest.parquet"), ids


def _status_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak of this process image; ru_maxrss would include the parent's, kept over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_child(root: str, queue: mp.Queue) -> None:
    manifest = Manifest.read(Path(root) / "manifest.parquet")
    before = _status_bytes("VmRSS")
    tracemalloc.start()
    large, _, _ = load_large(manifest, Path(root) / "cache", list(LARGE_DIMS), manifest.sample_ids)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _status_bytes("VmHWM")
    held = sum(t.numel() * t.element_size() for t in large.values())
    queue.put({"rss_before": before, "rss_peak": peak, "traced_peak": traced_peak, "held": held})


def measure_memory(root: Path, n: int) -> dict[str, float]:
    """Peak memory of loading the three caches, in a fresh process (this script's own arrays don't count).

    The target uses tracemalloc's peak (every numpy allocation: the held arrays plus read temporaries). The RSS
    growth is reported beside it; it also counts the shards' memory-mapped file pages, which are page cache
    (shared, reclaimable), not memory the trainer holds.
    """
    context = mp.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_memory_child, args=(str(root), queue))
    child.start()
    result = queue.get()
    child.join()
    cached = n * sum(LARGE_DIMS.values()) * 2  # float16 on disk
    growth = result["rss_peak"] - result["rss_before"]
    return {
        "cached_bytes": cached,
        "held_bytes": result["held"],
        "peak_bytes": result["traced_peak"],
        "peak_over_cached": result["traced_peak"] / cached,
        "rss_growth_bytes": growth,
        "rss_growth_over_cached": growth / cached,
    }


def _timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_cotrain(manifest: Manifest, root: Path, ids: list[str], max_steps: int | None, repeats: int) -> dict:
    """(a): the trainer's cotrain_epoch on TaskData vs the same steps on pre-materialised batches."""
    start = time.perf_counter()
    large, present, keys = load_large(manifest, root / "cache", list(LARGE_DIMS), ids)
    load_seconds = time.perf_counter() - start
    n = len(ids)
    splits = manifest.table["split"].to_numpy()
    labels = torch.from_numpy((np.random.default_rng(1).random(n) < 0.3).astype(np.float32))
    index = {s: torch.from_numpy(np.flatnonzero(splits == s)).long() for s in ("train", "val", "test")}
    train_idx = index["train"][: max_steps * 128] if max_steps else index["train"]
    index["train"] = train_idx
    data = TaskData(
        task="bench",
        sample_ids=ids,
        splits=splits,
        labels=labels,
        large=large,
        present=present,
        small={},
        small_config=None,
        cache_keys=keys,
        index=index,
    )
    small_feat = torch.randn(n, SMALL_DIM)
    config = TrainConfig(task="mortality", epochs=1, batch_size=128, lr=1e-4)
    torch.manual_seed(0)
    model = CollaborativeModel(data.large_dims, SMALL_DIM, preset_for("mortality"), "inverse")
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    steps = len(batches(train_idx, config.batch_size))

    def trainer_epoch() -> None:
        model.load_state_dict(initial)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        cotrain_epoch(model, optimizer, data, small_feat, config, 1, steps, None, False)

    # The reference: the very same batches, already gathered and cast, fed to the same step.
    ready = []
    for idx in batches(train_idx, config.batch_size, epoch_generator(config.seed, 1, 1)):
        ready.append(
            (
                {k: v[idx].float().clone() for k, v in large.items()},
                present[idx].clone(),
                small_feat[idx].clone(),
                labels[idx].clone(),
            )
        )

    def reference_epoch() -> None:
        model.load_state_dict(initial)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        model.train()
        for feats, flags, small, target in ready:
            losses = model.loss(model(feats, flags, small), target)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()

    reference_epoch()  # warm-up (allocator, kernels)
    reference = _timed(reference_epoch, repeats)
    trainer = _timed(trainer_epoch, repeats)
    return {
        "samples": n,
        "train_steps": steps,
        "load_seconds": load_seconds,
        "reference_seconds": reference,
        "trainer_seconds": trainer,
        "ratio": trainer / reference,
        "ratio_with_load": (trainer + load_seconds) / reference,
    }


def bench_small(n: int, max_steps: int | None, repeats: int) -> dict:
    """(b): the small model on gathered prepared arrays vs on the same batches pre-made."""
    rng = np.random.default_rng(2)
    length, steps_t, variables = 256, 48, 17
    small = {
        "xray.image": torch.from_numpy(rng.integers(0, 256, (n, 256, 256), dtype=np.uint8)),
        "xray.present": torch.ones(n, dtype=torch.bool),
        "notes.tokens": torch.from_numpy(rng.integers(1, 8000, (n, length), dtype=np.int32)),
        "notes.mask": torch.ones(n, length, dtype=torch.bool),
        "notes.present": torch.ones(n, dtype=torch.bool),
        "timeseries.values": torch.from_numpy(rng.standard_normal((n, steps_t, variables), dtype=np.float32)),
        "timeseries.mask": torch.from_numpy(rng.random((n, steps_t, variables)) < 0.6),
        "timeseries.present": torch.ones(n, dtype=torch.bool),
    }
    config = SmallModelConfig(
        inputs={
            "xray": SmallInputSpec(kind="image"),
            "notes": SmallInputSpec(kind="text", vocab_size=8001),
            "timeseries": SmallInputSpec(kind="timeseries", n_variables=variables),
        },
        hidden_dim=SMALL_DIM,
    )
    labels = torch.from_numpy((rng.random(n) < 0.3).astype(np.float32))
    data = TaskData(
        task="bench",
        sample_ids=[str(i) for i in range(n)],
        splits=np.array(["train"] * n),
        labels=labels,
        large={},
        present=torch.ones(n, 0, dtype=torch.bool),
        small=small,
        small_config=config,
        cache_keys={},
        index={"train": torch.arange(n)},
    )
    torch.manual_seed(0)
    model = SmallModel(config)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    train_idx = torch.arange(n)[: max_steps * 64] if max_steps else torch.arange(n)
    order = batches(train_idx, 64, epoch_generator(0, 0, 1))
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(batch: dict[str, torch.Tensor], target: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        loss = loss_fn(model(batch), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def trainer_epoch() -> None:
        model.load_state_dict(initial)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for idx in batches(train_idx, 64, epoch_generator(0, 0, 1)):
            step(data.small_batch(idx), data.labels[idx], optimizer)

    ready = [({k: v[idx].clone() for k, v in small.items()}, labels[idx].clone()) for idx in order]

    def reference_epoch() -> None:
        model.load_state_dict(initial)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for batch, target in ready:
            step(batch, target, optimizer)

    reference_epoch()
    reference = _timed(reference_epoch, repeats)
    trainer = _timed(trainer_epoch, repeats)
    return {
        "samples": n,
        "train_steps": len(order),
        "reference_seconds": reference,
        "trainer_seconds": trainer,
        "ratio": trainer / reference,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=11_483, help="cohort size (MIMIC-IV-MM: 11,483)")
    parser.add_argument("--max-steps", type=int, default=None, help="limit the co-training epoch (a) to N steps")
    parser.add_argument("--small-steps", type=int, default=None, help="limit the small-model epoch (b) to N steps")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per measurement (best is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="2,000 samples, 5 small-model steps")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.small_steps = min(args.samples, 2000), args.small_steps or 5
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="adacomed-bench-") as tmp:
        root = Path(tmp)
        console.print(f"writing a {args.samples}-sample cache ({sum(LARGE_DIMS.values())} dims in all) ...")
        manifest, ids = make_cohort(root, args.samples)
        memory = measure_memory(root, args.samples)
        cotrain = bench_cotrain(manifest, root, ids, args.max_steps, args.repeats)
    small = bench_small(args.samples, args.small_steps, args.repeats)
    results = {
        "cotrain": {**cotrain, "target_ratio": 1.10, "ok": cotrain["ratio"] <= 1.10},
        "small_model": {**small, "target_ratio": 1.20, "ok": small["ratio"] <= 1.20},
        "memory": {**memory, "target_ratio": 2.0, "ok": memory["peak_over_cached"] <= 2.0},
        "settings": {
            "samples": args.samples,
            "max_steps": args.max_steps,
            "small_steps": args.small_steps,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    table = Table(title=f"stage-two data handling, {args.samples} samples, CPU ({torch.get_num_threads()} threads)")
    for column in ("measurement", "reference", "trainer", "ratio", "target", "ok"):
        table.add_column(column, justify="right" if column != "measurement" else "left")
    table.add_row(
        "(a) co-training epoch",
        f"{cotrain['reference_seconds']:.2f} s",
        f"{cotrain['trainer_seconds']:.2f} s",
        f"{cotrain['ratio']:.3f}",
        "<= 1.10",
        str(results["cotrain"]["ok"]),
    )
    table.add_row(
        "(a) incl. cache load",
        f"{cotrain['reference_seconds']:.2f} s",
        f"{cotrain['trainer_seconds'] + cotrain['load_seconds']:.2f} s",
        f"{cotrain['ratio_with_load']:.3f}",
        "(one-off)",
        "-",
    )
    table.add_row(
        "(b) small-model epoch",
        f"{small['reference_seconds']:.2f} s",
        f"{small['trainer_seconds']:.2f} s",
        f"{small['ratio']:.3f}",
        "<= 1.20",
        str(results["small_model"]["ok"]),
    )
    table.add_row(
        "peak memory / cached",
        f"{memory['cached_bytes'] / 2**20:.0f} MiB",
        f"{memory['peak_bytes'] / 2**20:.0f} MiB",
        f"{memory['peak_over_cached']:.3f}",
        "<= 2.0",
        str(results["memory"]["ok"]),
    )
    table.add_row(
        "RSS growth / cached (incl. mmap pages)",
        f"{memory['cached_bytes'] / 2**20:.0f} MiB",
        f"{memory['rss_growth_bytes'] / 2**20:.0f} MiB",
        f"{memory['rss_growth_over_cached']:.3f}",
        "-",
        "-",
    )
    console.print(table)
    console.print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
