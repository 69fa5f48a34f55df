"""Run one of timm's own scripts (train.py, validate.py, benchmark.py) with mmcluster's models registered.

    torchrun --nproc_per_node=8 tools/imagenet/timm_script.py PATH/TO/timm/train.py \
        --config configs/paca_vit/imagenet/paca-vit_8xb128-300e_in1k.yaml --data-dir /data/imagenet --model paca_small
    python tools/imagenet/timm_script.py PATH/TO/timm/validate.py --data-dir /data/imagenet --model paca_small \
        --pretrained

timm's scripts live in its source repository (github.com/huggingface/pytorch-image-models), not in the pip
package; check out the tag of the installed timm version. This launcher imports mmcluster (which
registers paca_* in timm's model registry) and then runs the script as __main__ with the remaining
arguments, so the script itself stays unmodified.
"""

from __future__ import annotations

import os.path as osp
import runpy
import sys


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    script = argv.pop(0)
    if not osp.isfile(script):
        raise SystemExit(
            f'timm script {script} does not exist (clone pytorch-image-models at the installed '
            f'timm version and pass the path of train.py / validate.py)'
        )
    import mmcluster  # noqa: F401  (registers paca_* in timm)

    sys.argv = [script] + argv
    sys.path.insert(0, osp.dirname(osp.abspath(script)))  # as `python SCRIPT` would: its own folder first
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
