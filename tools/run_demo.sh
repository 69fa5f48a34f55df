#!/usr/bin/env bash
# The main job on bundled data (`make demo`): on a CPU, train and evaluate Mask R-CNN with PaCa-Tiny and a
# PaCa-head segmentor on the generated shapes dataset through tools/train.py and tools/test.py, then draw
# cluster-assignment heatmaps. Everything goes to work_dirs/demo/ (override with DEMO_DIR).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${DEMO_DIR:-work_dirs/demo}
DET_CFG=configs/demo/mask-rcnn_paca-tiny_fpn_shapes.py
SEG_CFG=configs/demo/paca-head_paca-tiny_shapes.py
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
step() { printf '\n==== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
start=$(date +%s)

step "1/6 shapes dataset (data/shapes)"
"$PY" tools/dataset_converters/make_shapes.py data/shapes

step "2/6 train Mask R-CNN + PaCa-Tiny ($DET_CFG)"
"$PY" tools/train.py "$DET_CFG" --work-dir "$OUT/det"

step "3/6 train PaCa head + PaCa-Tiny ($SEG_CFG)"
"$PY" tools/train.py "$SEG_CFG" --work-dir "$OUT/seg"

step "4/6 evaluate the detector (COCO bbox / segm mAP on the val split)"
det_ckpt=$(cat "$OUT/det/last_checkpoint")
"$PY" tools/test.py "$DET_CFG" "$det_ckpt" --work-dir "$OUT/det/test" | tee "$OUT/det_metrics.txt"

step "5/6 evaluate the segmentor (mIoU on the val split)"
seg_ckpt=$(cat "$OUT/seg/last_checkpoint")
"$PY" tools/test.py "$SEG_CFG" "$seg_ckpt" --work-dir "$OUT/seg/test" | tee "$OUT/seg_metrics.txt"

step "6/6 cluster-assignment heatmaps ($OUT/clusters)"
images=(data/shapes/coco/val/val_0000{0,1,2}.jpg)
"$PY" tools/analysis_tools/visualize_clusters.py "$DET_CFG" "${images[@]}" --checkpoint "$det_ckpt" --out-dir "$OUT/clusters/det"
"$PY" tools/analysis_tools/visualize_clusters.py "$SEG_CFG" "${images[@]/coco\/val/ade/images/validation}" \
  --checkpoint "$seg_ckpt" --out-dir "$OUT/clusters/seg"

step "done in $(( $(date +%s) - start )) s"
echo "detector  : $(grep '^metrics:' "$OUT/det_metrics.txt")"
echo "segmentor : $(grep '^metrics:' "$OUT/seg_metrics.txt")"
echo "checkpoints: $det_ckpt $seg_ckpt"
echo "heatmaps   : $(ls "$OUT"/clusters/*/*.png | tr '\n' ' ')"
