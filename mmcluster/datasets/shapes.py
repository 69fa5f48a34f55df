"""A deterministic toy dataset of textured shapes, written in COCO instance and ADE20K semantic formats.

Used by ``make demo`` and the tests: it needs no download, is made on demand in seconds, and is easy
enough that Mask R-CNN and the PaCa head learn it on a CPU in minutes. Every image shows 1-4
non-overlapping shapes on a noisy background; each class has its own outline and texture.

Layout under ``root``::

    coco/train/*.jpg   coco/val/*.jpg   coco/annotations/instances_{train,val}.json
    ade/images/{training,validation}/*.jpg   ade/annotations/{training,validation}/*.png

ADE20K conventions: label 0 is "unlabelled" (here: a thin ring around each shape) and is dropped by
``reduce_zero_label=True``; label 1 is background, labels 2.. are the shape classes, so after
reduction the classes are :data:`SEMANTIC_CLASSES`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

INSTANCE_CLASSES = ('circle', 'square', 'triangle')
SEMANTIC_CLASSES = ('background',) + INSTANCE_CLASSES
PALETTE = [(0, 0, 0), (220, 20, 60), (0, 128, 255), (255, 200, 0)]
FORMAT_VERSION = 2  # bump when the generated data changes
# circumradius factor per class, so the classes cover similar areas (circle pi r^2, square 2 r^2,
# triangle 1.3 r^2 for the same r)
SIZE_FACTOR = {'circle': 1.0, 'square': 1.15, 'triangle': 1.35}


@dataclass(frozen=True)
class ShapesSpec:
    image_size: int = 128
    num_train: int = 160
    num_val: int = 40
    min_objects: int = 1
    max_objects: int = 4
    seed: int = 0


def _polygon(cls: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if cls == 'circle':
        n, offset = 32, 0.0
    elif cls == 'square':
        n, offset = 4, angle
    else:
        n, offset = 3, angle
    return [
        (cx + radius * math.cos(offset + 2 * math.pi * k / n), cy + radius * math.sin(offset + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _texture(cls: str, size: int, rng: np.random.RandomState) -> np.ndarray:
    """An RGB texture filling the whole canvas; the shape mask selects it."""
    yy, xx = np.mgrid[0:size, 0:size]
    base = rng.uniform(0.55, 1.0, size=3)
    if cls == 'circle':  # stripes
        pattern = 0.6 + 0.4 * (((yy // 3) % 2) == 0)
    elif cls == 'square':  # checker board
        pattern = 0.6 + 0.4 * ((((yy // 4) + (xx // 4)) % 2) == 0)
    else:  # flat
        pattern = np.ones((size, size))
    return (pattern[..., None] * base[None, None, :] * 255).clip(0, 255)


def _render(spec: ShapesSpec, rng: np.random.RandomState):
    size = spec.image_size
    image = rng.normal(40, 12, size=(size, size, 3))
    instances = []
    occupied = np.zeros((size, size), dtype=bool)
    for _ in range(rng.randint(spec.min_objects, spec.max_objects + 1)):
        for _attempt in range(20):
            cls = INSTANCE_CLASSES[rng.randint(len(INSTANCE_CLASSES))]
            radius = rng.uniform(0.10, 0.20) * size * SIZE_FACTOR[cls]
            cx, cy = rng.uniform(radius, size - radius, size=2)
            polygon = _polygon(cls, cx, cy, radius, rng.uniform(0, 2 * math.pi))
            canvas = Image.new('L', (size, size), 0)
            ImageDraw.Draw(canvas).polygon(polygon, fill=1)
            mask = np.asarray(canvas, dtype=bool)
            halo = _dilate(mask, 2)
            if mask.sum() < 16 or (halo & occupied).any():
                continue
            occupied |= halo
            image[mask] = _texture(cls, size, rng)[mask]
            instances.append((cls, polygon, mask))
            break
    return np.clip(image, 0, 255).astype(np.uint8), instances


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def make_shapes_dataset(root: str | Path, spec: ShapesSpec = ShapesSpec()) -> Path:
    """Write the dataset under ``root`` (both formats) unless an identical one is already there."""
    root = Path(root)
    stamp = root / 'shapes.json'
    meta = dict(format_version=FORMAT_VERSION, **spec.__dict__)
    if stamp.is_file() and json.loads(stamp.read_text()) == meta:
        return root
    rng = np.random.RandomState(spec.seed)
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(INSTANCE_CLASSES)]
    for split, count, ade_split in (('train', spec.num_train, 'training'), ('val', spec.num_val, 'validation')):
        coco_dir = root / 'coco' / split
        ade_img_dir = root / 'ade' / 'images' / ade_split
        ade_ann_dir = root / 'ade' / 'annotations' / ade_split
        for d in (coco_dir, ade_img_dir, ade_ann_dir, root / 'coco' / 'annotations'):
            d.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            name = f'{split}_{index:05d}'
            image, instances = _render(spec, rng)
            Image.fromarray(image).save(coco_dir / f'{name}.jpg', quality=95)
            Image.fromarray(image).save(ade_img_dir / f'{name}.jpg', quality=95)
            images.append(dict(id=index + 1, file_name=f'{name}.jpg', height=spec.image_size, width=spec.image_size))
            label = np.ones((spec.image_size, spec.image_size), dtype=np.uint8)  # 1 = background
            for cls, polygon, mask in instances:
                label[_dilate(mask, 1) & ~mask & (label == 1)] = 0  # unlabelled ring
                label[mask] = SEMANTIC_CLASSES.index(cls) + 1
                annotations.append(
                    dict(
                        id=len(annotations) + 1,
                        image_id=index + 1,
                        category_id=INSTANCE_CLASSES.index(cls) + 1,
                        segmentation=[[round(c, 2) for point in polygon for c in point]],
                        area=float(mask.sum()),
                        bbox=_box(mask),
                        iscrowd=0,
                    )
                )
            Image.fromarray(label).save(ade_ann_dir / f'{name}.png')
        (root / 'coco' / 'annotations' / f'instances_{split}.json').write_text(
            json.dumps(dict(images=images, annotations=annotations, categories=categories))
        )
    stamp.write_text(json.dumps(meta))
    return root
