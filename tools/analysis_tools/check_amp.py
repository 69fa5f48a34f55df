"""Mixed-precision training steps of backbones, classifiers and segmentors: does anything overflow to NaN/inf?

    python tools/analysis_tools/check_amp.py paca-tiny paca-small-teacher timm:paca_base \
        configs/paca_vit/paca-head_paca-base_8xb2-160k_ade20k-512x512.py --shapes 512 --device cuda --steps 5

For every model, dtype (fp16 with a dynamic GradScaler, as mmengine's AmpOptimWrapper; bf16) and shape, it
runs --steps AdamW steps on random images (segmentors: random labels; classifiers: random classes;
backbones: the mean of all output maps as the loss) under torch.autocast and checks that every loss and,
after the last step, every parameter is finite, that at least one step was applied (fp16: the scaler skips
a step whose scaled gradients overflow and halves the scale, as mmengine's AmpOptimWrapper does; the
first steps at the initial scale 2**16 often overflow), and that every floating-point output of the
modules that must compute in fp32 is fp32. Those modules are what the model's clustering backbone or
classifier names through ``fp32_modules()`` (the cluster-map protocol of
``mmcluster/models/backbones/base.py``; e.g. the softmax of the cluster assignment over tokens), and
elsewhere in the model (e.g. a decode head) the modules whose class sets ``fp32_output = True``. Works for
any family that implements the protocol. Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from typing import Iterator

import torch
import torch.nn as nn

import mmcluster  # noqa: F401  (registers the models)
from mmcluster.utils.benchmark import build_named_model, training_loss

DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def build(spec: str):
    """(name, model, loss function of a batch of images)."""
    name, model, kind = build_named_model(spec)
    if kind in ('timm', 'backbone'):
        return name, model, training_loss(model, kind)
    if kind != 'mmseg':
        raise ValueError(
            f'{spec}: only segmentor configs are supported (a detector needs boxes and masks '
            f'for its loss); check its backbone by preset name instead, e.g. paca-tiny'
        )
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


def fp32_modules(model: nn.Module) -> 'OrderedDict[str, nn.Module]':
    """Name -> module for every module of ``model`` whose floating-point outputs must be fp32 under autocast:
    those that a submodule implementing the cluster-map protocol lists in ``fp32_modules()`` (inside such a
    submodule, nothing else), and outside them those whose class sets ``fp32_output = True``."""
    found: OrderedDict = OrderedDict()
    seen: set[int] = set()
    protocol_roots: list[str] = []
    for prefix, module in model.named_modules():
        if any(root == '' or prefix == root or prefix.startswith(root + '.') for root in protocol_roots):
            continue
        listed = getattr(module, 'fp32_modules', None)
        if callable(listed):
            protocol_roots.append(prefix)
            for name, sub in listed():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    found[f'{prefix}.{name}' if prefix else name] = sub
        elif getattr(type(module), 'fp32_output', False) and id(module) not in seen:
            seen.add(id(module))
            found[prefix] = module
    return found


def _floating_dtypes(output) -> Iterator[torch.dtype]:
    if isinstance(output, torch.Tensor):
        if output.is_floating_point():
            yield output.dtype
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _floating_dtypes(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _floating_dtypes(item)


def check(name, model, loss_fn, dtype: str, size: tuple[int, int], device: str, steps: int, batch: int) -> dict:
    """Run ``steps`` AdamW steps under autocast and check losses, parameters and the fp32 modules' outputs.

    Returns a dict with ``ok`` and what it was decided from: ``finite``, ``losses``, ``applied`` steps,
    ``fp32_modules`` (how many modules must output fp32), ``fp32_ran`` (how many of them ran),
    ``output_dtypes`` (the floating dtypes they produced, e.g. ``'float32'``; ``'-'`` when none) and
    ``not_fp32`` (``'module name: dtype'`` for every module that produced another dtype).
    """
    model.to(device)
    model.train()
    watched = fp32_modules(model)
    outputs: dict[str, set] = {key: set() for key in watched}

    def record(key):
        return lambda _m, _i, out: outputs[key].update(_floating_dtypes(out))

    hooks = [module.register_forward_hook(record(key)) for key, module in watched.items()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.split(':')[0], enabled=dtype == 'fp16')
    finite = True
    losses = []
    applied = 0
    try:
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
    finally:
        for hook in hooks:
            hook.remove()
    finite &= all(bool(torch.isfinite(p).all()) for p in model.parameters())
    dtypes = set().union(*outputs.values()) if outputs else set()
    not_fp32 = [
        f'{key}: {",".join(sorted(str(d).replace("torch.", "") for d in found))}'
        for key, found in outputs.items()
        if found - {torch.float32}
    ]
    return dict(
        model=name,
        dtype=dtype,
        size=f'{size[0]}x{size[1]}',
        finite=finite,
        losses=losses,
        applied=applied,
        steps=steps,
        fp32_modules=len(watched),
        fp32_ran=sum(bool(found) for found in outputs.values()),
        output_dtypes=','.join(sorted(str(d).replace('torch.', '') for d in dtypes)) or '-',
        not_fp32=not_fp32,
        ok=finite and applied > 0 and not not_fp32,
    )


def report(result: dict) -> str:
    text = (
        f'{"OK  " if result["ok"] else "FAIL"} {result["model"]} {result["dtype"]} {result["size"]}: '
        f'finite={result["finite"]}, fp32 modules {result["fp32_ran"]}/{result["fp32_modules"]} ran, '
        f'their outputs in {result["output_dtypes"]}, steps applied {result["applied"]}/{result["steps"]}, '
        f'losses {", ".join(f"{v:.4g}" for v in result["losses"])}'
    )
    if result['not_fp32']:
        text += '\n     not fp32: ' + '; '.join(result['not_fp32'])
    return text


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
                try:
                    name, model, loss_fn = build(spec)
                except (ValueError, KeyError, FileNotFoundError) as error:
                    parser.error(str(error))
                result = check(name, model, loss_fn, dtype, (size, size), args.device, args.steps, args.batch_size)
                results.append(result)
                print(report(result), flush=True)
    failed = [r for r in results if not r['ok']]
    print(f'{len(results) - len(failed)} passed, {len(failed)} failed')
    if failed and argv is None:
        raise SystemExit(1)
    return results


if __name__ == '__main__':
    main()
