"""Checkpoint loading that never unpickles arbitrary objects, and partial loading with a report.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``. Since torch 2.6 that means
``weights_only=True``, and loading any checkpoint mmengine itself wrote (``--resume``) fails with an
UnpicklingError: it holds mmengine ``HistoryBuffer`` objects and numpy arrays. Turning ``weights_only``
off would unpickle whatever a downloaded file contains. Instead, :func:`install_safe_checkpoint_loading`
(run on ``import mmcluster``) makes every mmengine checkpoint loader run under an allow-list of the few
globals that mmengine checkpoints hold; anything else is still refused.
"""
from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from typing import Callable, Iterable, Optional, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import CheckpointLoader

_np_core = getattr(np, '_core', None) or np.core
_HISTORY_BUFFER_STATISTICS = frozenset({'min', 'max', 'current', 'mean'})  # HistoryBuffer's defaults


def _history_buffer_getattr(obj, name: str):
    """The only ``getattr`` a checkpoint may call: HistoryBuffer pickles its statistics methods as
    ``getattr(HistoryBuffer, 'mean')`` etc. (its defaults, or ones registered before loading)."""
    if obj is HistoryBuffer and (name in _HISTORY_BUFFER_STATISTICS or name in HistoryBuffer._statistics_methods):
        return getattr(obj, name)
    raise pickle_error(f'checkpoint asks for getattr({obj!r}, {name!r}), which is not allowed')


def pickle_error(message: str) -> Exception:
    return torch.serialization.pickle.UnpicklingError(message)


def _numpy_globals() -> list:
    entries: list = [np.ndarray, np.dtype]
    for name in ('_reconstruct', 'scalar'):
        func = getattr(_np_core.multiarray, name)
        entries.append(func)
        # checkpoints written with numpy 1.x name the module numpy.core
        entries.append((func, f'numpy.core.multiarray.{name}'))
    dtype_classes = {type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                                  np.float16, np.float32, np.float64)}
    entries.extend(sorted(dtype_classes, key=lambda c: c.__name__))
    return entries


# Globals an mmengine checkpoint (meta, message_hub, optimizer, param_schedulers) may reference.
SAFE_CHECKPOINT_GLOBALS: list = [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr'),
                                 (_history_buffer_getattr, '__builtin__.getattr')] + _numpy_globals()


def safe_load(filename, map_location='cpu'):
    """``torch.load(..., weights_only=True)`` with :data:`SAFE_CHECKPOINT_GLOBALS` allowed."""
    with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
        return torch.load(filename, map_location=map_location, weights_only=True)


def _restricted(loader: Callable) -> Callable:
    if getattr(loader, '_mmcluster_safe', False):
        return loader

    @functools.wraps(loader)
    def load(*args, **kwargs):
        with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
            return loader(*args, **kwargs)

    load._mmcluster_safe = True
    return load


def install_safe_checkpoint_loading() -> None:
    """Make every registered mmengine checkpoint loader (local files, http(s), open-mmlab://, ...) load
    with ``weights_only=True`` and :data:`SAFE_CHECKPOINT_GLOBALS`. Idempotent."""
    if not hasattr(torch.serialization, 'safe_globals'):
        raise RuntimeError(f'mmcluster needs torch >= 2.6 for safe checkpoint loading, found {torch.__version__}')

    def load_from_local(filename, map_location):
        import os.path as osp
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        return safe_load(filename, map_location)

    load_from_local._mmcluster_safe = True
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        CheckpointLoader.register_scheme(prefix, load_from_local if prefix == '' else _restricted(loader), force=True)


# ---------------------------------------------------------------------------------------------------


def extract_state_dict(checkpoint: Union[dict, 'OrderedDict']) -> 'OrderedDict[str, torch.Tensor]':
    """The model weights of a checkpoint: its 'state_dict', 'model' or 'module' entry (or itself), with a
    DataParallel ``module.`` prefix removed."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f'a checkpoint must be a dict, got {type(checkpoint).__name__}')
    state_dict = checkpoint
    for key in ('state_dict', 'model', 'module'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return OrderedDict((k, v) for k, v in state_dict.items() if isinstance(v, torch.Tensor))


class LoadReport:
    """What :func:`load_pretrained` did, for logs and tests."""

    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.reinitialized: list[tuple[str, tuple, tuple]] = []
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self.ignored: list[str] = []

    def __repr__(self) -> str:
        return (f'LoadReport(loaded={len(self.loaded)}, reinitialized={len(self.reinitialized)}, '
                f'missing={len(self.missing)}, unexpected={len(self.unexpected)}, ignored={len(self.ignored)})')


def _short_list(keys: Iterable[str], limit: int = 20) -> str:
    keys = list(keys)
    text = ', '.join(keys[:limit])
    return text + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def load_pretrained(module: nn.Module, checkpoint: str, prefix: Optional[str] = None,
                    convert: Optional[Callable[[dict], dict]] = None,
                    may_reinit: Optional[Callable[[str], bool]] = None,
                    ignore_unexpected: Iterable[str] = (), logger: Union[str, logging.Logger] = 'current',
                    ) -> LoadReport:
    """Load ``checkpoint`` (a path or URL) into an already initialised ``module`` and report what did not match.

    Args:
        prefix: keep only keys with this prefix and strip it (e.g. ``'backbone.'`` for a detector
            checkpoint). By default a ``backbone.`` prefix is stripped when the checkpoint has one.
        convert: maps the (prefix-stripped) state dict to ``module``'s key layout, e.g. from an official
            repository's layout.
        may_reinit: keys for which a shape mismatch is expected (e.g. the clustering output layer when a
            downstream task changes the number of clusters): such tensors keep their initialisation and
            are named in the log. Any other shape mismatch raises ValueError.
        ignore_unexpected: key prefixes of the checkpoint to drop without a warning (e.g. a classifier head).

    Raises:
        FileNotFoundError: the file does not exist (never skipped silently).
        ValueError: nothing in the checkpoint matches, or a shape mismatch that ``may_reinit`` does not allow.
    """
    raw = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu', logger=logger)
    state_dict = extract_state_dict(raw)
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    if prefix:
        state_dict = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix))
        if not state_dict:
            raise ValueError(f'no key of {checkpoint} starts with prefix {prefix!r}')
    if convert is not None:
        state_dict = convert(state_dict)

    report = LoadReport()
    own = module.state_dict()
    to_load = OrderedDict()
    wrong_shape = []
    ignore_unexpected = tuple(ignore_unexpected)
    for key, value in state_dict.items():
        if key not in own:
            (report.ignored if ignore_unexpected and key.startswith(ignore_unexpected) else report.unexpected).append(key)
        elif own[key].shape != value.shape:
            entry = (key, tuple(value.shape), tuple(own[key].shape))
            (report.reinitialized if may_reinit is not None and may_reinit(key) else wrong_shape).append(entry)
        else:
            to_load[key] = value
            report.loaded.append(key)
    if wrong_shape:
        raise ValueError(f'{checkpoint} does not fit {type(module).__name__}: shape mismatch for '
                         + _short_list(f'{k} (checkpoint {c}, model {m})' for k, c, m in wrong_shape))
    if not to_load:
        raise ValueError(f'no tensor of {checkpoint} matches {type(module).__name__}: is it the right model?')
    report.missing = [k for k in own if k not in to_load and k not in {r[0] for r in report.reinitialized}]
    module.load_state_dict(to_load, strict=False)

    name = type(module).__name__
    print_log(f'{name}: loaded {len(report.loaded)}/{len(own)} tensors from {checkpoint}', logger=logger)
    if report.reinitialized:
        print_log(f'{name}: re-initialised (shape differs from the checkpoint): '
                  + _short_list(f'{k} {c} -> {m}' for k, c, m in report.reinitialized), logger=logger)
    if report.missing:
        print_log(f'{name}: missing in the checkpoint, left initialised: {_short_list(report.missing)}',
                  logger=logger, level=logging.WARNING)
    if report.unexpected:
        print_log(f'{name}: unexpected in the checkpoint, not loaded: {_short_list(report.unexpected)}',
                  logger=logger, level=logging.WARNING)
    if report.ignored:
        print_log(f'{name}: ignored {len(report.ignored)} checkpoint tensors ({_short_list(report.ignored, 4)})',
                  logger=logger)
    return report

