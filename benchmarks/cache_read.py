"""Cache read throughput against a raw ``.npy`` memory map of the same matrix, in the same process.

Targets (issue "Foundation"): random batches of 256 ids at least 0.8x the memmap's throughput, full reads at
least 0.6x. Both sides read through the OS page cache (warm): the comparison is the cost of our layout and
lookup, not of the disk. Results go to ``benchmarks/results/cache_read.json``.

    python benchmarks/cache_read.py [--rows 20000] [--dim 1024] [--batches 200]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from adacomed.cache_schema import CacheDir, EmbeddingCache, Fingerprint

RESULTS = Path(__file__).parent / "results" / "cache_read.json"


def _in_memory(values: np.ndarray) -> np.ndarray:
    """What a user does to hold every row in RAM as their own array: copy a read-only view; keep a fresh array."""
    return np.array(values) if isinstance(values, np.memmap) or not values.flags.writeable else values


def build(root: Path, matrix: np.ndarray, ids: list[str], fmt: str, rows_per_shard: int) -> EmbeddingCache:
    fp = Fingerprint(
        modality="bench",
        encoder=f"{fmt}-{rows_per_shard}",
        encoder_version="1",
        weights="none",
        pooling="none",
        dim=matrix.shape[1],
        input_hash="bench",
    )
    cache = CacheDir(root, fp, fmt)
    plan = cache.initialise(len(ids), rows_per_shard)
    for i in range(plan.n_shards):
        lo, hi = i * plan.rows_per_shard, (i + 1) * plan.rows_per_shard
        cache.commit_shard(plan, i, ids[lo:hi], {"embeddings": matrix[lo:hi]})
    cache.finalize(plan)
    return EmbeddingCache(cache.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((args.rows, args.dim)).astype(np.float16)
    ids = [f"s{i:07d}" for i in range(args.rows)]  # sorted, as the cache stores them
    batches = [np.sort(rng.choice(args.rows, args.batch_size, replace=False)) for _ in range(args.batches)]
    id_batches = [[ids[j] for j in b] for b in batches]

    results: dict[str, object] = {
        "rows": args.rows,
        "dim": args.dim,
        "dtype": "float16",
        "batch_size": args.batch_size,
        "batches": args.batches,
        "layouts": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        np.save(root / "reference.npy", matrix)
        ref = np.load(root / "reference.npy", mmap_mode="r")
        layouts = {
            "h5, one shard (default size)": ("h5", 32768),
            "h5, 5 shards": ("h5", -(-args.rows // 5)),
            "parquet, one shard": ("parquet", 32768),
        }
        caches = {name: build(root / "cache", matrix, ids, fmt, size) for name, (fmt, size) in layouts.items()}
        for cache in caches.values():
            assert np.array_equal(cache.read(id_batches[0]), matrix[batches[0]])
        # Interleave reference and candidates in every repetition (the machine is shared and noisy), keep the best.
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            runs = {"ref random": lambda: [np.asarray(ref[b]) for b in batches], "ref full": lambda: np.array(ref)}
            for name, cache in caches.items():
                runs[f"{name} random"] = lambda c=cache: [c.read(b) for b in id_batches]
                runs[f"{name} full"] = lambda c=cache: _in_memory(c.read_all())
            for key, fn in runs.items():
                start = time.perf_counter()
                fn()
                best[key] = min(best.get(key, np.inf), time.perf_counter() - start)
        ref_random, ref_full = best["ref random"], best["ref full"]
        for name in caches:
            random_s, full_s = best[f"{name} random"], best[f"{name} full"]
            results["layouts"][name] = {
                "random_batches_s": random_s,
                "full_read_s": full_s,
                "random_vs_memmap": ref_random / random_s,
                "full_vs_memmap": ref_full / full_s,
            }
        results["reference"] = {"random_batches_s": ref_random, "full_read_s": ref_full}
        results["targets"] = {"random_vs_memmap": 0.8, "full_vs_memmap": 0.6}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"reference npy memmap: random {ref_random * 1e3:.1f} ms / {args.batches} batches, full {ref_full * 1e3:.1f} ms"
    )
    print(f"{'layout':34s} {'random x':>9s} {'full x':>8s}   (throughput relative to the memmap; >1 is faster)")
    for name, row in results["layouts"].items():
        print(f"{name:34s} {row['random_vs_memmap']:9.2f} {row['full_vs_memmap']:8.2f}")


if __name__ == "__main__":
    main()
