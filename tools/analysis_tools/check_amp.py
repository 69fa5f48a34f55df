"""Mixed-precision training steps of backbones, classifiers and segmentors: does anything overflow to NaN/inf?

    python tools/analysis_tools/check_amp.py paca-tiny paca-small-teacher timm:paca_base \
        configs/paca_vit/paca-head_paca-base_8xb2-160k_ade20k-512x512.py --shapes 512 --device cuda --steps 5

For every model, dtype (fp16 with a dynamic GradScaler, as mmengine's AmpOptimWrapper; bf16) and shape, it
runs --steps AdamW steps on random images (segmentors: random labels; classifiers: random classes;
backbones: the mean of all output maps as the loss) under torch.autocast and checks that every loss and,
after the last step, every parameter is finite, that at least one step was applied (fp16: the scaler skips
a step whose scaled gradients overflow and halves the scale, as mmengine's AmpOptimWrapper does; the
first steps at the initial scale 2**16 often overflow), and that every cluster assignment (the softmax
over tokens) is computed in fp32. Exit status 1 if any check fails.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402

import mmcluster  # noqa: E402,F401
from mmcluster.models.backbones.paca_vit import PatchToClusterAttention  # noqa: E402
from mmcluster.utils.benchmark import build_named_model  # noqa: E402

DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def build(spec: str):
    """(name, model, loss function of a batch of images)."""
    name, model, kind = build_named_model(spec)
    if kind == 'timm':
        return name, model, lambda x: torch.nn.functional.cross_entropy(
            model(x).float(), torch.randint(0, model.num_classes, (x.shape[0],), device=x.device))
    if kind == 'backbone':
        return name, model, lambda x: sum(o.float().mean() for o in model(x))
    if kind != 'mmseg':
        raise SystemExit(f'{spec}: only segmentor configs are supported (a detector needs boxes and masks '
                         f'for its loss); check its backbone by preset name instead, e.g. paca-tiny')
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    classes = model.decode_head.num_classes

    def loss(x):
        samples = []
        for _ in range(x.shape[0]):
            sample = SegDataSample(metainfo=dict(img_shape=tuple(x.shape[-2:]), pad_shape=tuple(x.shape[-2:])))
            sample.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, *x.shape[-2:]), device=x.device))
            samples.append(sample)
        return sum(v for k, v in model.loss(x, samples).items() if 'loss' in k)
    return name, model, loss


def check(name, model, loss_fn, dtype: str, size: tuple[int, int], device: str, steps: int, batch: int) -> dict:
    model.to(device)
    model.train()
    assignment_dtypes = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: assignment_dtypes.add(out[1].dtype) if out[1] is not None else None)
             for m in model.modules() if isinstance(m, PatchToClusterAttention)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.split(':')[0], enabled=dtype == 'fp16')
    finite = True
    losses = []
    applied = 0
    for _ in range(steps):
        images = torch.randn(batch, 3, *size, device=device) * 2
        with torch.autocast(device.split(':')[0], dtype=DTYPES[dtype]):
            loss = loss_fn(images)
        finite &= bool(torch.isfinite(loss))
        scaler.scale(loss).backward()
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(optimizer)  # skipped (and the scale halved) when a scaled gradient overflowed
        scaler.update()
        applied += not scaler.is_enabled() or scaler.get_scale() >= scale
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    finite &= all(bool(torch.isfinite(p).all()) for p in model.parameters())
    for hook in hooks:
        hook.remove()
    return dict(model=name, dtype=dtype, size=f'{size[0]}x{size[1]}', finite=finite, losses=losses,
                applied=applied, steps=steps,
                assignment=','.join(sorted(str(d).replace('torch.', '') for d in assignment_dtypes)) or '-',
                ok=finite and applied > 0 and assignment_dtypes <= {torch.float32})


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='+', help='preset backbones (see benchmark.py --list), timm:NAME, seg configs')
    parser.add_argument('--shapes', nargs='+', type=int, default=[512], help='square input sizes')
    parser.add_argument('--dtypes', nargs='+', choices=sorted(DTYPES), default=['fp16', 'bf16'])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--batch-size', type=int, default=2)
    args = parser.parse_args(argv)
    for name in ('shapes', 'steps', 'batch_size'):
        values = getattr(args, name)
        if min(values if isinstance(values, list) else [values]) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {values}')
    results = []
    for spec in args.models:
        for dtype in args.dtypes:
            for size in args.shapes:
                torch.manual_seed(0)
                name, model, loss_fn = build(spec)
                result = check(name, model, loss_fn, dtype, (size, size), args.device, args.steps, args.batch_size)
                results.append(result)
                print(f"{'OK  ' if result['ok'] else 'FAIL'} {name} {dtype} {result['size']}: finite={result['finite']} "
                      f"assignment softmax in {result['assignment']}, steps applied {result['applied']}/{result['steps']}, losses "
                      f"{', '.join(f'{v:.4g}' for v in result['losses'])}", flush=True)
    failed = [r for r in results if not r['ok']]
    print(f'{len(results) - len(failed)} passed, {len(failed)} failed')
    if failed and argv is None:
        raise SystemExit(1)
    return results


if __name__ == '__main__':
    main()
