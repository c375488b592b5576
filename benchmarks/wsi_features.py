"""WSI feature extraction on the CPU, two ratios measured in one run on a synthetic 16k x 16k slide:

1. **Patch read + preprocess, 2 reader workers vs 1**: the same CLAM-compatible coordinates (``tcga`` preset) read
   through :class:`PatchReaderPool` (worker processes, each with its own open slide; read 256 px, Resize 224,
   CenterCrop 224), after the workers have started. Target: >= 1.7x.
2. **A UNI-sized model through the pipeline vs its bare forward**: timm ``vit_large_patch16_224`` with UNI's
   arguments (random weights), over the same patches. Pipeline = the WSI encoder path as ``adacomed-extract``
   runs it (slide open, segmentation, patching, reader workers, normalisation, forward, bag and slide vector);
   bare = the forward alone over the same patches already read and preprocessed in memory. Target: <= 15 %
   added.

    python benchmarks/wsi_features.py [--read-patches 800] [--model-patches 32] [--batch-size 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from adacomed.extract.encoders import uni
from adacomed.extract.wsi.patch_reader import PatchReaderPool, ReadSpec
from adacomed.extract.wsi.patcher import SlidePatcher

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import wsi_synthetic as synthetic  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "wsi_features.json"


def read_all(pool: PatchReaderPool, spec: ReadSpec, coords: np.ndarray, batch_size: int) -> float:
    start = time.perf_counter()
    for _ in pool.batches(spec, coords, batch_size):
        pass
    return time.perf_counter() - start


def reader_scaling(slide: Path, n: int, batch_size: int, repeats: int) -> dict:
    patched = SlidePatcher(preset="tcga").read(slide)
    coords = patched.coords[:n]
    spec = ReadSpec(patched.slide_options, 0, 256, 256, uni.UniPreprocessing().transform)
    times: dict[int, list[float]] = {1: [], 2: []}
    with PatchReaderPool(1, kind="process") as one, PatchReaderPool(2, kind="process") as two:
        one.warm_up()
        two.warm_up()
        read_all(one, spec, coords[:64], batch_size)  # open the slide in every worker
        read_all(two, spec, coords[:128], batch_size)
        for _ in range(repeats):  # interleaved, so both see the same background load
            times[1].append(read_all(one, spec, coords, batch_size))
            times[2].append(read_all(two, spec, coords, batch_size))
    one_s, two_s = statistics.median(times[1]), statistics.median(times[2])
    return {
        "patches": int(len(coords)),
        "one_worker_s": times[1],
        "two_workers_s": times[2],
        "one_worker_patches_per_s": len(coords) / one_s,
        "two_workers_patches_per_s": len(coords) / two_s,
        "speedup_2_over_1": one_s / two_s,
    }


def model_overhead(slide: Path, n: int, batch_size: int, repeats: int) -> dict:
    import torch

    model = uni.build_uni_model(uni.TINY_RANDOM, size={"embed_dim": 1024, "depth": 24, "num_heads": 16})
    pre = uni.UniPreprocessing()
    pipeline_s: list[float] = []
    bare_s: list[float] = []
    with PatchReaderPool(1, kind="process") as pool:
        pool.warm_up()
        for _ in range(repeats):
            start = time.perf_counter()
            patched = SlidePatcher(preset="tcga").read(slide)
            coords = patched.coords[:n]
            spec = ReadSpec(patched.slide_options, 0, 256, 256, pre.transform)
            bag = uni.embed_patches(model, pool, spec, coords, batch_size, pre)
            _ = bag.slide_vector
            pipeline_s.append(time.perf_counter() - start)
            pixels = [b[1] for b in pool.batches(spec, coords, batch_size)]
            batches = [uni.normalizer(pre, "cpu")(p) for p in pixels]
            start = time.perf_counter()
            with torch.inference_mode():
                bare = np.concatenate([model(b).numpy() for b in batches])
            bare_s.append(time.perf_counter() - start)
            np.testing.assert_allclose(bag.features, bare, rtol=1e-3, atol=1e-3)
    pipe, bare_med = statistics.median(pipeline_s), statistics.median(bare_s)
    return {
        "model": "vit_large_patch16_224 (UNI arguments, random weights), float32, CPU",
        "torch_threads": torch.get_num_threads(),
        "patches": n,
        "batch_size": batch_size,
        "pipeline_s": pipeline_s,
        "bare_forward_s": bare_s,
        "pipeline_patches_per_s": n / pipe,
        "bare_patches_per_s": n / bare_med,
        "added_fraction": pipe / bare_med - 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--read-patches", type=int, default=800)
    parser.add_argument("--model-patches", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep-slide", type=Path, default=None, help="reuse / keep the slide at this path")
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args()
    # A partial run (--skip-model) keeps the other sections of the last full run, each with its own command.
    results: dict = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["machine"] = f"{os.cpu_count()} cores, shared with other jobs (timings noisy; medians)"
    with tempfile.TemporaryDirectory() as tmp:
        slide = args.keep_slide or Path(tmp) / "bench16k.tiff"
        if not slide.exists():
            synthetic.write_slide(synthetic.multi_contour_recipe(16384), slide)
        results["reader"] = reader_scaling(slide, args.read_patches, 32, args.repeats)
        r = results["reader"]
        print(
            f"read+preprocess: 1 worker {r['one_worker_patches_per_s']:.0f} patches/s, 2 workers "
            f"{r['two_workers_patches_per_s']:.0f} patches/s, speedup {r['speedup_2_over_1']:.2f}x",
            flush=True,
        )
        if not args.skip_model:
            results["model"] = model_overhead(slide, args.model_patches, args.batch_size, args.repeats)
            m = results["model"]
            print(
                f"UNI-sized ViT-L/16: pipeline {m['pipeline_patches_per_s']:.2f} patches/s, bare "
                f"{m['bare_patches_per_s']:.2f} patches/s, added {100 * m['added_fraction']:.1f} %",
                flush=True,
            )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
