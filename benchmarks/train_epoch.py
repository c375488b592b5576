"""What stage two's data handling costs, on the CPU, at MIMIC-IV-MM size (a script, not a test).

(a) One co-training epoch through the trainer's data path (embeddings loaded from a real cache written with
    ``CacheDir``, held as tensors, batches gathered by index) against the same model's forward + backward on the
    same batches already materialised in memory. Target: data handling adds at most 10 %.
(b) A small-model epoch from prepared inputs: the prepared-input caches are written with ``CacheDir`` in the
    exact layout ``load_prepared_inputs`` reads (fingerprints from the real input groups fitted on a synthetic
    manifest; uint8 X-rays 256 x 256, note tokens, time-series grids), loaded with ``load_prepared_inputs`` and
    gathered by the trainer (random 224 crop + normalisation in the model), against the same model on the same
    batches pre-made (float32 224 x 224 crops with the model's crop/normalise bypassed, tokens, grids).
    Target: at most 20 %.
Both sides are warmed up and their order alternates between repeats; the best time of each is kept.
Memory: peak anonymous RSS (``RssAnon`` of /proc/self/status, sampled every 2 ms, in a fresh process) over loading
plus one epoch, minus the process's RssAnon before loading, against the cached arrays' bytes. Target: at most 2x.
Memory-mapped shard pages (file-backed, reclaimable) are not anonymous and do not count.

    .venv/bin/python benchmarks/train_epoch.py            # 11,483 samples; (b) times 50 steps
    .venv/bin/python benchmarks/train_epoch.py --quick    # 1,000 samples; (b) a full epoch (11 steps)

Writes ``benchmarks/results/train_epoch.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from adacomed.cache_schema import CacheDir, Fingerprint, Manifest, ManifestInfo, ModalitySource, SmallInput
from adacomed.train import prepare as prepare_module
from adacomed.train.collab import CollaborativeModel
from adacomed.train.config import TrainConfig
from adacomed.train.cotrain import cotrain_epoch
from adacomed.train.data import TaskData, load_large, small_tensors
from adacomed.train.losses import task_loss
from adacomed.train.prepare import load_prepared_inputs
from adacomed.train.presets import preset_for
from adacomed.train.runtime import batches, epoch_generator
from adacomed.train.small_model import CROP_SIZE, IMAGE_MEAN, IMAGE_STD, SmallModel

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


TOKENS, STEPS_T, VARIABLES, SMALL_BATCH = 256, 48, 17, 64


def make_small_cohort(root: Path, n: int, seed: int = 3) -> Manifest:
    """A manifest with X-ray, note and time-series small inputs, and their prepared caches written directly.

    The input groups are the trainer's own, fitted on this manifest (the tokenizer trained on short synthetic
    notes, the time-series statistics on 16 small files all samples point to), so each cache sits exactly where
    ``load_prepared_inputs`` looks; the arrays themselves are random, in the stored dtypes and shapes.
    """
    rng = np.random.default_rng(seed)
    ids = [f"s{i:06d}" for i in range(n)]
    words = [f"w{i}" for i in range(500)]
    series = root / "series"
    series.mkdir(parents=True)
    for k in range(16):
        values = rng.standard_normal((STEPS_T, VARIABLES)).astype(np.float32)
        variables = np.array([f"v{j:02d}" for j in range(VARIABLES)])
        np.savez(series / f"{k}.npz", values=values, hours=np.arange(STEPS_T, dtype=np.float32), variables=variables)
    table = pd.DataFrame(
        {
            "sample_id": ids,
            "subject_id": ids,
            "split": np.where(rng.random(n) < 0.7, "train", np.where(rng.random(n) < 0.5, "val", "test")),
            "xray": [f"{s}.png" for s in ids],
            "note": [" ".join(rng.choice(words, 12)) for _ in ids],
            "vitals": [f"{i % 16}.npz" for i in range(n)],
        }
    )
    info = ManifestInfo(
        cohort="benchmark",
        small_inputs={
            "xray": SmallInput(column="xray", kind="image", options={"root": "."}),
            "notes": SmallInput(column="note", kind="text"),
            "vitals": SmallInput(column="vitals", kind="timeseries", options={"root": "series"}),
        },
    )
    Manifest(table, info).write(root / "small.parquet")
    manifest = Manifest.read(root / "small.parquet")
    for group in prepare_module._groups(manifest, None, TOKENS, 8000, STEPS_T):
        group.fit()
        writer = CacheDir(root / "cache", prepare_module._fingerprint(group))
        order = sorted(group.sample_ids)
        plan = writer.initialise(n, prepare_module.DEFAULT_ROWS_PER_SHARD)
        group.prepare_build(writer.path)
        vocab = group.spec(writer.path).vocab_size if group.model_kind == "text" else 0
        for index in range(plan.n_shards):
            shard_ids = plan.ids_of(order, index)
            k = len(shard_ids)
            name = group.name
            if group.model_kind == "image":
                arrays = {f"{name}.image": rng.integers(0, 256, (k, 256, 256), dtype=np.uint8)}
            elif group.model_kind == "text":
                arrays = {
                    f"{name}.tokens": rng.integers(1, vocab, (k, TOKENS), dtype=np.int32),
                    f"{name}.mask": np.ones((k, TOKENS), dtype=bool),
                }
            else:
                arrays = {
                    f"{name}.values": rng.standard_normal((k, STEPS_T, VARIABLES), dtype=np.float32),
                    f"{name}.mask": rng.random((k, STEPS_T, VARIABLES)) < 0.6,
                }
            arrays[f"{name}.present"] = np.ones(k, dtype=bool)
            writer.commit_shard(plan, index, shard_ids, arrays)
        writer.finalize(plan)
    return manifest


def small_task_data(manifest: Manifest, root: Path) -> TaskData:
    """What ``load_task_data`` builds for the small model: prepared inputs loaded and gathered to the cohort."""
    prepared = load_prepared_inputs(manifest, root / "cache", max_length=TOKENS, time_steps=STEPS_T)
    ids = manifest.sample_ids
    rows = np.arange(len(ids))
    splits = manifest.table["split"].to_numpy()
    labels = torch.from_numpy((np.random.default_rng(1).random(len(ids)) < 0.3).astype(np.float32))
    return TaskData(
        task="bench",
        sample_ids=ids,
        splits=splits,
        labels=labels,
        large={},
        present=torch.ones(len(ids), 0, dtype=torch.bool),
        small=small_tensors(prepared, ids, rows, ids),
        small_config=prepared.model_config(hidden_dim=SMALL_DIM),
        cache_keys={},
        index={s: torch.from_numpy(np.flatnonzero(splits == s)).long() for s in ("train", "val", "test")},
    )


def small_train_step(model: SmallModel, batch: dict, target: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """The trainer's stage-(a) step."""
    loss = task_loss(model(batch).float(), target).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# ------------------------------------------------------------------------------------------------------ memory
def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class AnonSampler:
    """Peak of ``RssAnon`` sampled every 2 ms on a thread (plus VmHWM - RssFile at the end as a cross-check)."""

    def __enter__(self) -> AnonSampler:
        self.baseline = _status("RssAnon")
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _status("RssAnon"))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))
        self.hwm_minus_file = _status("VmHWM") - _status("RssFile")


def _memory_large(root: str, queue: mp.Queue) -> None:
    torch.set_num_threads(1)
    manifest = Manifest.read(Path(root) / "manifest.parquet")
    ids = manifest.sample_ids
    torch.manual_seed(0)
    model = CollaborativeModel(LARGE_DIMS, SMALL_DIM, preset_for("mortality"), "inverse")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    config = TrainConfig(task="mortality", epochs=1, batch_size=128)
    with AnonSampler() as sampler:
        data = _cotrain_data(manifest, Path(root), ids)[0]
        small_feat = torch.randn(len(ids), SMALL_DIM)
        steps = len(batches(data.index["train"], 128))
        cotrain_epoch(model, optimizer, data, small_feat, config, 1, steps, None, False)
    held = sum(t.numel() * t.element_size() for t in data.large.values())
    queue.put(
        {"baseline": sampler.baseline, "peak": sampler.peak, "hwm_minus_file": sampler.hwm_minus_file, "held": held}
    )


def _memory_small(root: str, steps: int, queue: mp.Queue) -> None:
    torch.set_num_threads(1)
    manifest = Manifest.read(Path(root) / "small.parquet")
    with AnonSampler() as sampler:
        data = small_task_data(manifest, Path(root))
        torch.manual_seed(0)
        model = SmallModel(data.small_config).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for idx in batches(data.index["train"], SMALL_BATCH, epoch_generator(0, 0, 1))[:steps]:
            small_train_step(model, data.small_batch(idx), data.labels[idx], optimizer)
    held = sum(t.numel() * t.element_size() for t in data.small.values())
    queue.put(
        {"baseline": sampler.baseline, "peak": sampler.peak, "hwm_minus_file": sampler.hwm_minus_file, "held": held}
    )


def measure_memory(target, args: tuple, cached_bytes: int) -> dict[str, float]:
    """Run ``target`` in a fresh process (this script's own arrays don't count) and relate its peak to the cache."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=target, args=(*args, queue))
    child.start()
    result = queue.get()
    child.join()
    growth = result["peak"] - result["baseline"]
    return {
        "cached_bytes": cached_bytes,
        "held_bytes": result["held"],
        "rss_anon_before": result["baseline"],
        "rss_anon_peak": result["peak"],
        "peak_anon_growth_bytes": growth,
        "peak_over_cached": growth / cached_bytes,
        "vmhwm_minus_rssfile_bytes": result["hwm_minus_file"],
    }


# ------------------------------------------------------------------------------------------------------ timing
def _alternating(reference, trainer, repeats: int) -> tuple[float, float]:
    """Best time of each side; both warmed up first, then the order alternates so neither always runs first."""
    reference()
    trainer()
    best = {"reference": float("inf"), "trainer": float("inf")}
    for repeat in range(repeats):
        order = [("reference", reference), ("trainer", trainer)]
        for name, fn in order if repeat % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best["reference"], best["trainer"]


def _cotrain_data(manifest: Manifest, root: Path, ids: list[str], max_steps: int | None = None):
    large, present, keys = load_large(manifest, root / "cache", list(LARGE_DIMS), ids)
    n = len(ids)
    splits = manifest.table["split"].to_numpy()
    labels = torch.from_numpy((np.random.default_rng(1).random(n) < 0.3).astype(np.float32))
    index = {s: torch.from_numpy(np.flatnonzero(splits == s)).long() for s in ("train", "val", "test")}
    if max_steps:
        index["train"] = index["train"][: max_steps * 128]
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
    return data, large, present, labels


def bench_cotrain(manifest: Manifest, root: Path, ids: list[str], max_steps: int | None, repeats: int) -> dict:
    """(a): the trainer's cotrain_epoch on TaskData vs the same steps on pre-materialised batches."""
    start = time.perf_counter()
    data, large, present, labels = _cotrain_data(manifest, root, ids, max_steps)
    load_seconds = time.perf_counter() - start
    train_idx = data.index["train"]
    small_feat = torch.randn(len(ids), SMALL_DIM)
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

    reference, trainer = _alternating(reference_epoch, trainer_epoch, repeats)
    return {
        "samples": len(ids),
        "train_steps": steps,
        "load_seconds": load_seconds,
        "reference_seconds": reference,
        "trainer_seconds": trainer,
        "ratio": trainer / reference,
        "ratio_with_load": (trainer + load_seconds) / reference,
    }


def bench_small(manifest: Manifest, root: Path, max_steps: int | None, repeats: int) -> dict:
    """(b): the small model through load_prepared_inputs + the trainer's gathers vs the same batches pre-made."""
    start = time.perf_counter()
    data = small_task_data(manifest, root)
    load_seconds = time.perf_counter() - start
    torch.manual_seed(0)
    model = SmallModel(data.small_config)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    order = batches(data.index["train"], SMALL_BATCH, epoch_generator(0, 0, 1))
    order = order[:max_steps] if max_steps else order
    image = "xray"
    encoder = model.encoders[image]

    def trainer_epoch() -> None:
        model.load_state_dict(initial)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for idx in order:
            small_train_step(model, data.small_batch(idx), data.labels[idx], optimizer)

    offset = (256 - CROP_SIZE) // 2
    ready = []
    for idx in order:
        batch = {k: v[idx].clone() for k, v in data.small.items()}
        crop = batch[f"{image}.image"][:, offset : offset + CROP_SIZE, offset : offset + CROP_SIZE]
        batch[f"{image}.image"] = ((crop.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD)[:, None].contiguous()
        batch["notes.tokens"] = batch["notes.tokens"].long()
        ready.append((batch, data.labels[idx].clone()))

    def reference_epoch() -> None:
        model.load_state_dict(initial)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        encoder.crop = lambda images: images  # pre-cropped and normalised: bypass the model's own
        try:
            for batch, target in ready:
                small_train_step(model, batch, target, optimizer)
        finally:
            del encoder.crop

    reference, trainer = _alternating(reference_epoch, trainer_epoch, repeats)
    return {
        "samples": len(manifest.sample_ids),
        "train_steps": len(order),
        "load_seconds": load_seconds,
        "reference_seconds": reference,
        "trainer_seconds": trainer,
        "ratio": trainer / reference,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=11_483, help="cohort size (MIMIC-IV-MM: 11,483)")
    parser.add_argument("--max-steps", type=int, default=None, help="limit the co-training epoch (a) to N steps")
    parser.add_argument("--small-steps", type=int, default=50, help="small-model steps timed in (b) (0 = epoch)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per side (best is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="1,000 samples; (b) a full small-model epoch")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.small_steps = min(args.samples, 1000), 0
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="adacomed-bench-") as tmp:
        root = Path(tmp)
        console.print(f"writing a {args.samples}-sample cohort: large caches and prepared small inputs ...")
        manifest, ids = make_cohort(root, args.samples)
        small_manifest = make_small_cohort(root, args.samples)
        large_bytes = args.samples * sum(LARGE_DIMS.values()) * 2  # float16 on disk
        small_bytes = args.samples * (256 * 256 + TOKENS * 5 + STEPS_T * VARIABLES * 5 + 3)
        memory_large = measure_memory(_memory_large, (str(root),), large_bytes)
        memory_small = measure_memory(_memory_small, (str(root), 5), small_bytes)
        cotrain = bench_cotrain(manifest, root, ids, args.max_steps, args.repeats)
        small = bench_small(small_manifest, root, args.small_steps or None, args.repeats)
    results = {
        "cotrain": {**cotrain, "target_ratio": 1.10, "ok": cotrain["ratio"] <= 1.10},
        "small_model": {**small, "target_ratio": 1.20, "ok": small["ratio"] <= 1.20},
        "memory_cotrain": {**memory_large, "target_ratio": 2.0, "ok": memory_large["peak_over_cached"] <= 2.0},
        "memory_small": {**memory_small, "target_ratio": 2.0, "ok": memory_small["peak_over_cached"] <= 2.0},
        "settings": {
            "samples": args.samples,
            "max_steps": args.max_steps,
            "small_steps": args.small_steps or "epoch",
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "memory_children_threads": 1,
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
    rows = [
        ("(a) co-training epoch", cotrain, "ratio", "<= 1.10", results["cotrain"]["ok"]),
        ("(b) small-model steps", small, "ratio", "<= 1.20", results["small_model"]["ok"]),
    ]
    for label, res, key, target, ok in rows:
        table.add_row(
            f"{label} ({res['train_steps']} steps)",
            f"{res['reference_seconds']:.2f} s",
            f"{res['trainer_seconds']:.2f} s",
            f"{res[key]:.3f}",
            target,
            str(ok),
        )
    for label, mem in (("(a) load + epoch", memory_large), ("(b) load + 5 steps", memory_small)):
        table.add_row(
            f"peak RssAnon growth / cached, {label}",
            f"{mem['cached_bytes'] / 2**20:.0f} MiB",
            f"{mem['peak_anon_growth_bytes'] / 2**20:.0f} MiB",
            f"{mem['peak_over_cached']:.3f}",
            "<= 2.0",
            str(mem["peak_over_cached"] <= 2.0),
        )
    console.print(table)
    console.print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
