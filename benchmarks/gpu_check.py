"""GPU check for stage one: throughput of the three heaviest encoders, pipeline vs bare model, in one run.

For each model, random weights at full size, the same inputs go through (a) the bare forward (inputs already
preprocessed on the device) and (b) the pipeline as ``adacomed-extract`` runs it:

* **UNI-sized ViT-L/16** (timm ``vit_large_patch16_224``, UNI's arguments), fp16 and bf16 autocast, patches/s.
  Pipeline: synthetic 16k x 16k slide -> CLAM-compatible segmentation and patching -> reader worker processes
  (each with its own open slide) -> normalisation -> forward -> bag (N x 1024) and slide vector.
* **DINOv2 ViT-g/14** (transformers ``Dinov2Model``, giant config), bf16, images/s. Pipeline: PNG X-rays ->
  ``adacomed-extract``'s runner (decode threads, preprocessing, batches, forward, committed cache shard).
* **13B LLaMA-architecture model** (``LlamaModel``, Llama-2-13B shapes), bf16, tokens/s (non-padding tokens).
  Pipeline: notes -> the runner with the text encoder (tokenise, right-pad, forward, masked mean, shard).

Prints one table and writes JSON. Sized to finish in about 10 minutes on one large GPU; ``--smoke`` runs tiny
configurations of the same classes on the CPU in seconds (tested), to check the script itself.

    python benchmarks/gpu_check.py [--device cuda] [--out benchmarks/results/gpu_check.json]
    python benchmarks/gpu_check.py --smoke --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

RESULTS = Path(__file__).parent / "results" / "gpu_check.json"


@dataclass(frozen=True)
class Sizes:
    uni: dict[str, int]
    uni_patches: int
    uni_batch: int
    dinov2: dict[str, Any]
    dinov2_images: int
    dinov2_batch: int
    llama: dict[str, Any]
    notes: int
    note_words: int
    llama_batch: int
    max_length: int
    slide: int
    reader_workers: int


FULL = Sizes(
    uni={"embed_dim": 1024, "depth": 24, "num_heads": 16},
    uni_patches=4096,
    uni_batch=256,
    dinov2={
        "hidden_size": 1536,
        "num_hidden_layers": 40,
        "num_attention_heads": 24,
        "use_swiglu_ffn": True,
        "patch_size": 14,
        "image_size": 518,
    },
    dinov2_images=1024,
    dinov2_batch=64,
    llama={
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    notes=256,
    note_words=700,
    llama_batch=8,
    max_length=1024,
    slide=16384,
    reader_workers=min(16, os.cpu_count() or 1),
)
SMOKE = Sizes(
    uni={"embed_dim": 32, "depth": 2, "num_heads": 2},
    uni_patches=24,
    uni_batch=8,
    dinov2={
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "use_swiglu_ffn": True,
        "patch_size": 14,
        "image_size": 56,
    },
    dinov2_images=8,
    dinov2_batch=4,
    llama={
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 256,
    },
    notes=6,
    note_words=40,
    llama_batch=3,
    max_length=64,
    slide=3072,
    reader_workers=1,
)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def autocast(device: str, dtype: str) -> Any:
    import contextlib

    import torch

    if device.startswith("cuda") and dtype in ("float16", "bfloat16"):
        return torch.autocast("cuda", dtype=getattr(torch, dtype))
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------ UNI
def check_uni(sizes: Sizes, device: str, dtypes: list[str], work: Path) -> list[dict]:
    import torch
    import wsi_synthetic as synthetic

    from adacomed.extract.encoders import uni
    from adacomed.extract.wsi.patch_reader import PatchReaderPool, ReadSpec
    from adacomed.extract.wsi.patcher import SlidePatcher

    slide = synthetic.write_slide(synthetic.multi_contour_recipe(sizes.slide), work / "slide.tiff")
    model = uni.build_uni_model(uni.TINY_RANDOM, size=sizes.uni).to(device)
    pre = uni.UniPreprocessing()
    rows = []
    with PatchReaderPool(sizes.reader_workers) as pool:
        pool.warm_up()
        patched = SlidePatcher(preset="bwh_biopsy", step_size=64).read(slide)  # overlapping grid: enough patches
        coords = np.resize(patched.coords, (sizes.uni_patches, 2))
        spec = ReadSpec(patched.slide_options, 0, 256, 256, pre.transform)
        for dtype in dtypes:
            cast = autocast(device, dtype)

            def pipeline(cast: Any = cast) -> None:
                fresh = SlidePatcher(preset="bwh_biopsy", step_size=64).read(slide)
                del fresh  # segmentation + patching are part of the pipeline's cost
                uni.embed_patches(model, pool, spec, coords, sizes.uni_batch, pre, device=device, autocast=cast)

            batch = torch.randn(sizes.uni_batch, 3, 224, 224, device=device)
            steps = max(1, len(coords) // sizes.uni_batch)

            def bare(cast: Any = cast, batch: Any = batch, steps: int = steps) -> None:
                with torch.inference_mode(), cast:
                    for _ in range(steps):
                        model(batch)

            pipe_s = timed(pipeline, device)
            bare_s = timed(bare, device)
            rows.append(
                row("UNI-sized ViT-L/16", dtype, "patches/s", len(coords) / pipe_s, steps * sizes.uni_batch / bare_s)
            )
    return rows


# ------------------------------------------------------------------------------------------------ runner helpers
def run_pipeline(manifest: Path, modality: str, cache: Path, encoder: Any, batch_size: int) -> float:
    from adacomed.extract.runner import ExtractConfig, plan_job, run_local

    config = ExtractConfig(
        manifest=manifest,
        modality=modality,
        cache=cache,
        encoder=encoder.spec.name,
        weights="tiny-random",
        batch_size=batch_size,
        device=encoder.device,
        num_workers=4,
    )
    job = plan_job(config, encoder=encoder)
    start = time.perf_counter()
    run_local(job)
    sync(encoder.device)
    return time.perf_counter() - start


def write_manifest(root: Path, modality: str, column: str, kind: str, values: list[Any], rel: str = ".") -> Path:
    import pandas as pd

    from adacomed.cache_schema import Manifest, ManifestInfo, ModalitySource

    table = pd.DataFrame(
        {
            "sample_id": [f"s{i:05d}" for i in range(len(values))],
            "subject_id": [str(i) for i in range(len(values))],
            "split": "train",
            column: values,
        }
    )
    info = ManifestInfo(cohort="gpu-check", modalities={modality: ModalitySource(column, kind, rel)})
    return Manifest(table, info).write(root / f"{modality}.parquet")


# ------------------------------------------------------------------------------------------------ DINOv2
def check_dinov2(sizes: Sizes, device: str, dtype: str, work: Path) -> dict:
    import torch
    from PIL import Image
    from transformers import Dinov2Config, Dinov2Model

    from adacomed.extract.encoders import create_encoder

    rng = np.random.default_rng(0)
    folder = work / "xray"
    folder.mkdir()
    for i in range(sizes.dinov2_images):
        Image.fromarray((rng.random((512, 512)) * 255).astype(np.uint8), mode="L").save(folder / f"{i}.png")
    manifest = write_manifest(work, "xray", "path", "path", [f"{i}.png" for i in range(sizes.dinov2_images)], "xray")
    torch_dtype = getattr(torch, dtype) if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = Dinov2Model(Dinov2Config(**sizes.dinov2)).to(torch_dtype).eval()
    encoder = create_encoder("dinov2-giant", "tiny-random", device, dtype if device.startswith("cuda") else "float32")
    encoder._model, encoder.embed_dim = model, sizes.dinov2["hidden_size"]
    pipe_s = run_pipeline(manifest, "xray", work / "cache-xray", encoder, sizes.dinov2_batch)
    batch = torch.randn(sizes.dinov2_batch, 3, 224, 224, device=device, dtype=torch_dtype)
    steps = max(1, sizes.dinov2_images // sizes.dinov2_batch)

    def bare() -> None:
        with torch.inference_mode():
            for _ in range(steps):
                model(pixel_values=batch)

    bare_s = timed(bare, device)
    return row("DINOv2 ViT-g/14", dtype, "images/s", sizes.dinov2_images / pipe_s, steps * sizes.dinov2_batch / bare_s)


# ------------------------------------------------------------------------------------------------ LLaMA
def check_llama(sizes: Sizes, device: str, dtype: str, work: Path) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaModel

    from adacomed.extract.encoders import create_encoder

    rng = np.random.default_rng(0)
    words = ["renal", "mass", "stable", "chest", "pain", "no", "acute", "findings", "follow", "up", "grade", "3"]
    notes = [" ".join(rng.choice(words, sizes.note_words)) for _ in range(sizes.notes)]
    manifest = write_manifest(work, "notes", "note", "text", notes)
    torch_dtype = getattr(torch, dtype) if device.startswith("cuda") else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            model = LlamaModel(LlamaConfig(**sizes.llama)).eval()
    finally:
        torch.set_default_dtype(previous)
    encoder = create_encoder(
        "me-llama-13b",
        "tiny-random",
        device,
        dtype if device.startswith("cuda") else "float32",
        max_length=sizes.max_length,
    )
    encoder._model, encoder.embed_dim = model, sizes.llama["hidden_size"]
    batches = [
        encoder.collate([encoder.load_input(n) for n in notes[i : i + sizes.llama_batch]])
        for i in range(0, len(notes), sizes.llama_batch)
    ]
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    pipe_s = run_pipeline(manifest, "notes", work / "cache-notes", encoder, sizes.llama_batch)
    on_device = [{k: v.to(device) for k, v in b.items()} for b in batches]

    def bare() -> None:
        with torch.inference_mode():
            for b in on_device:
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])

    bare_s = timed(bare, device, warmup=0)
    return row("13B LLaMA-architecture", dtype, "tokens/s", tokens / pipe_s, tokens / bare_s)


def row(model: str, dtype: str, unit: str, pipeline: float, bare: float) -> dict:
    return {
        "model": model,
        "dtype": dtype,
        "unit": unit,
        "pipeline": pipeline,
        "bare": bare,
        "pipeline_over_bare": pipeline / bare if bare else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, seconds): checks the script")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip", default="", help="comma list of sections to skip: uni,dinov2,llama")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sizes = SMOKE if args.smoke else FULL
    skip = {s for s in args.skip.split(",") if s}
    half = ["float16", "bfloat16"] if device.startswith("cuda") else ["float32"]
    main_dtype = "bfloat16" if device.startswith("cuda") else "float32"
    rows: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sections = (
            ("uni", lambda: check_uni(sizes, device, half, work / "uni")),
            ("dinov2", lambda: [check_dinov2(sizes, device, main_dtype, work / "dinov2")]),
            ("llama", lambda: [check_llama(sizes, device, main_dtype, work / "llama")]),
        )
        for name, run in sections:
            if name in skip:
                continue
            (work / name).mkdir()
            rows.extend(run())
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    print(f"{'model':26s} {'dtype':9s} {'unit':10s} {'pipeline':>10s} {'bare':>10s} {'ratio':>6s}")
    for r in rows:
        print(
            f"{r['model']:26s} {r['dtype']:9s} {r['unit']:10s} {r['pipeline']:10.1f} {r['bare']:10.1f} "
            f"{r['pipeline_over_bare']:6.2f}"
        )
    result = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "smoke": args.smoke,
        "torch": torch.__version__,
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    out = args.out or (RESULTS if not args.smoke else Path(tempfile.gettempdir()) / "gpu_check_smoke.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
