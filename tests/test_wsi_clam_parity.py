"""CLAM parity: our segmentation and patching reproduce CLAM's own output on synthetic slides.

The fixtures (``tests/fixtures/wsi/clam_parity.{json,npz}``) are what CLAM's unmodified ``create_patches_fp.py``
wrote for each case (see ``tests/fixtures/wsi/make_clam_fixtures.py``): the kept contours and holes (as sha256
digests of their int32 level-0 vertex arrays, in order) and every patch coordinate in on-disk order. Slides are
regenerated here from the same deterministic recipes; CLAM itself is not needed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from adacomed.extract.wsi.patching import patch_coords
from adacomed.extract.wsi.presets import BUILTIN, preset_from_row
from adacomed.extract.wsi.segmentation import segment_tissue
from adacomed.extract.wsi.slide import Slide

FIXTURES = Path(__file__).parent / "fixtures" / "wsi"
sys.path.insert(0, str(FIXTURES))
sys.path.insert(0, str(Path(__file__).parent))

import make_clam_fixtures as recorder  # noqa: E402
import wsi_synthetic as synthetic  # noqa: E402

RECORD = json.loads((FIXTURES / "clam_parity.json").read_text())
COORDS = dict(np.load(FIXTURES / "clam_parity.npz", allow_pickle=False))


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clam_slides")
    paths = recorder.write_slides(folder)
    for name, recipe in recorder.slide_recipes().items():
        digest = hashlib.sha256(synthetic.label_map(recipe).tobytes()).hexdigest()
        assert digest == RECORD["label_maps"][name], f"the synthetic slide {name!r} changed; re-record the fixtures"
    demo_digest = hashlib.sha256(paths["demo"].read_bytes()).hexdigest()
    assert demo_digest == RECORD["label_maps"]["demo"], "the demo slide generator changed; re-record the fixtures"
    return paths


def _digests(arrays: list[np.ndarray]) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(a, dtype=np.int32).tobytes()).hexdigest() for a in arrays]


def test_every_preset_and_contour_test_is_covered() -> None:
    cases = RECORD["cases"].values()
    assert any(c["preset"] is None for c in cases)  # CLAM's script defaults
    for name, preset in BUILTIN.items():
        if name != "default":
            assert any(c["preset"] and preset_from_row(_row(c), "x").segmentation == preset.segmentation for c in cases)
    assert {c["preset"]["contour_fn"] for c in cases if c["preset"]} == {"four_pt", "four_pt_hard", "center", "basic"}
    assert any(len(c["contours"]) >= 4 and any(c["holes"]) for c in cases)  # several contours with holes


def _row(case: dict) -> dict[str, str]:
    return {k: str(v) for k, v in case["preset"].items()}


@pytest.mark.parametrize("case", sorted(RECORD["cases"]))
def test_contours_and_coordinates_match_clam(case: str, slides: dict[str, Path]) -> None:
    expected = RECORD["cases"][case]
    preset = BUILTIN["default"] if expected["preset"] is None else preset_from_row(_row(expected), case)
    with Slide(slides[expected["slide"]]) as slide:
        tissue = segment_tissue(slide, preset.segmentation)
        grid = patch_coords(
            slide,
            tissue,
            preset.patch_params(
                patch_size=expected["patch_size"], step_size=expected["step_size"], patch_level=expected["patch_level"]
            ),
        )
    assert _digests(tissue.contours) == [c["sha256"] for c in expected["contours"]]
    assert [len(c) for c in tissue.contours] == [c["vertices"] for c in expected["contours"]]
    assert [_digests(h) for h in tissue.holes] == [[h["sha256"] for h in hs] for hs in expected["holes"]]
    reference = COORDS[case]
    assert grid.coords.dtype == np.int64
    np.testing.assert_array_equal(grid.coords, reference)  # same coordinates, same order
    attrs = {**grid.clam_attrs, "name": expected["attrs"]["name"]}
    assert {k: attrs[k] for k in expected["attrs"]} == expected["attrs"]
