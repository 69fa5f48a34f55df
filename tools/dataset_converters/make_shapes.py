"""Write the bundled toy dataset (textured shapes) in COCO instance and ADE20K semantic formats.

    python tools/dataset_converters/make_shapes.py data/shapes

Deterministic; does nothing if an identical dataset is already there. See mmcluster/datasets/shapes.py.
"""

import argparse
from dataclasses import fields

from mmcluster.datasets.shapes import ShapesSpec, make_shapes_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', nargs='?', default='data/shapes', help='output directory')
    for field in fields(ShapesSpec):
        parser.add_argument(f'--{field.name.replace("_", "-")}', type=int, default=field.default)
    args = parser.parse_args()
    spec = ShapesSpec(**{f.name: getattr(args, f.name) for f in fields(ShapesSpec)})
    root = make_shapes_dataset(args.root, spec)
    print(f'shapes dataset ({spec.num_train} train / {spec.num_val} val images) in {root}')


if __name__ == '__main__':
    main()
