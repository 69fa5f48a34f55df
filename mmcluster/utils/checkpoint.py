"""Checkpoint loading that never unpickles arbitrary objects, with errors that name the file, and partial
loading with a report.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``. Since torch 2.6 that means
``weights_only=True``, and loading any checkpoint mmengine itself wrote (``--resume``) fails with an
UnpicklingError: it holds mmengine ``HistoryBuffer`` objects and numpy arrays. Turning ``weights_only``
off would unpickle whatever a downloaded file contains, and mmengine's http(s) loader (which
``open-mmlab://``, ``torchvision://``, ``modelzoo://`` and ``mmcls://`` use too) does exactly that: it goes
through ``torch.hub.load_state_dict_from_url``, whose ``weights_only`` defaults to False.

:func:`load_checkpoint_file` is the one loader for every location: it downloads URLs into torch hub's
checkpoint directory (the cache that torch.hub and mmengine use) and loads every file with
``weights_only=True`` under an allow-list of the few globals that mmengine checkpoints hold
(:data:`SAFE_CHECKPOINT_GLOBALS`). :func:`install_safe_checkpoint_loading` (run on ``import mmcluster``)
registers it for every mmengine checkpoint scheme, so that mmengine's Runner (``load_from``, ``--resume``),
``init_cfg=dict(type='Pretrained', ...)`` and mmdet's / mmseg's ``init_detector`` / ``init_model`` use it.

:func:`load_checkpoint_file` and :func:`safe_load` need torch only (the timm models use them without the
OpenMMLab stack); the mmengine parts (``HistoryBuffer`` in the allow-list, the model-zoo schemes, the
registration) are used where mmengine is installed.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import io
import logging
import os
import pickle
import re
import sys
import urllib.error
import zipfile
from collections import OrderedDict
from typing import Callable, Iterable, Optional, Union
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn as nn

try:
    from mmengine.logging import HistoryBuffer, print_log
except ImportError:  # torch + timm only: the timm models load their checkpoints through this module too
    HistoryBuffer = None

    def print_log(msg, logger=None, level=logging.INFO):
        (logger if isinstance(logger, logging.Logger) else logging.getLogger('mmcluster')).log(level, msg)


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
    dtype_classes = {
        type(np.dtype(t))
        for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.float16, np.float32, np.float64)
    }
    entries.extend(sorted(dtype_classes, key=lambda c: c.__name__))
    return entries


# Globals an mmengine checkpoint (meta, message_hub, optimizer, param_schedulers) may reference, and the
# `argparse.Namespace` of the training arguments that timm's and DeiT's training scripts store as 'args' (the
# official PaCa-ViT ImageNet files come from timm's train.py, SecViT's from a DeiT-style main.py): a plain
# attribute container, rebuilt by setting its attributes, whose values must be allowed themselves.
SAFE_CHECKPOINT_GLOBALS: list = (
    (
        [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr'), (_history_buffer_getattr, '__builtin__.getattr')]
        if HistoryBuffer is not None
        else []
    )
    + _numpy_globals()
    + [argparse.Namespace]
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded: empty, truncated, not a checkpoint, or (subclasses) unsafe,
    not downloadable, or not fitting the model. The message names the file or URL."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The checkpoint asks to unpickle a global outside :data:`SAFE_CHECKPOINT_GLOBALS` (``global_name``);
    it was refused before anything in the file ran."""

    def __init__(self, message: str, global_name: Optional[str] = None) -> None:
        super().__init__(message)
        self.global_name = global_name


class CheckpointDownloadError(CheckpointError, ConnectionError):
    """A checkpoint URL could not be fetched (no network, unreachable host, HTTP error); ``url`` is the URL
    and ``cached_file`` where the file would have been cached."""

    def __init__(self, message: str, url: str, cached_file: Optional[str] = None) -> None:
        super().__init__(message)
        self.url = url
        self.cached_file = cached_file


class CheckpointMismatchError(CheckpointError, ValueError):
    """A checkpoint does not fit a model exactly. ``shape_mismatches`` holds ``(key, checkpoint shape,
    model shape)``; ``missing`` and ``unexpected`` the keys absent from the checkpoint / the model."""

    def __init__(self, message: str, shape_mismatches: list, missing: list, unexpected: list) -> None:
        super().__init__(message)
        self.shape_mismatches = shape_mismatches
        self.missing = missing
        self.unexpected = unexpected


# What a caller may append to the error when a URL cannot be fetched; the default is for configs.
OFFLINE_HINT = (
    'To work offline, download the file elsewhere and point at the local copy instead: in a config, '
    '`--cfg-options model.backbone.init_cfg.checkpoint=/path/to/file.pth` (or `load_from=...`); for a '
    "timm model, `pretrained_cfg_overlay=dict(file='/path/to/file.pth')`; for tools/test.py, the "
    'CHECKPOINT argument.'
)

_ALLOWED = 'tensors, containers, numpy arrays and mmengine HistoryBuffers'


def _weights_only_detail(message: str) -> str:
    """The unpickler's own complaint from torch's weights_only error, without torch's advice around it."""
    match = re.search(r'WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|$)', message, re.S)
    detail = match.group(1) if match else 'the weights-only unpickler refused it'
    match = re.search(r'(Trying to load unsupported GLOBAL \S+ whose module \S+ is blocked\.)', message)
    detail = match.group(1) if match else detail
    detail = re.split(r'\.\s+Please use `torch\.serialization', detail)[0]
    return ' '.join(detail.split()).rstrip('.')


def _refused_global(message: str) -> Optional[str]:
    """The global that torch's weights_only unpickler (or our getattr guard) refused, if that was the error."""
    match = re.search(r'GLOBAL ([\w.]+)', message)
    if match:  # torch names builtins without their module
        return match.group(1) if '.' in match.group(1) else f'builtins.{match.group(1)}'
    match = re.search(r'checkpoint asks for (getattr\(.*?\))', message)
    if match:
        return match.group(1)
    match = re.search(r'reduce for unrecognized function (\S+)', message)
    return match.group(1) if match else None


def _names_a_global(name: str) -> bool:
    """False when ``name`` (module.attribute) is certainly not an object: its module is imported and lacks
    the attribute. Nothing is imported to find out."""
    module, _, attribute = name.rpartition('.')
    if not module or '(' in name or module not in sys.modules:
        return True
    return hasattr(sys.modules[module], attribute)


def _file_kind(path: Optional[str]) -> str:
    """Why a file that torch cannot read fails: 'truncated' or 'not a checkpoint'."""
    if path is None:
        return 'is truncated or not a PyTorch checkpoint'
    with open(path, 'rb') as f:
        head = f.read(16)
    if head.startswith(b'PK\x03\x04') and not zipfile.is_zipfile(path):
        return 'is truncated (a zip archive without its end: an interrupted download or copy?)'
    if head.startswith(b'\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19'):  # torch.save's legacy format
        return "is truncated or corrupt (torch.save's legacy format, cut short: an interrupted download or copy?)"
    return 'is not a PyTorch checkpoint (a file written by torch.save), or it is truncated'


def _torch_load(source, name: str, map_location, path: Optional[str] = None, extra: str = ''):
    """``torch.load(source, weights_only=True)`` under the allow-list; errors name ``name``."""
    try:
        with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        refused = _refused_global(message)
        if refused is not None and not _names_a_global(refused):  # e.g. a name cut short in a truncated file
            raise CheckpointError(
                f'{name} {_file_kind(path)} (it names {refused}, which does not exist).{extra}'
            ) from None
        if refused is not None:
            raise UnsafeCheckpointError(
                f'{name} asks to unpickle {refused}, which mmcluster refuses to unpickle: it loads checkpoints '
                f'with weights_only=True and allows only {_ALLOWED}. Nothing in the file was run. If you '
                "wrote the file yourself, save only its tensors (e.g. torch.save(checkpoint['state_dict'], path)).",
                global_name=refused,
            ) from None
        # torch's message advises weights_only=False; drop it (from None) and keep only the unpickler's detail
        raise CheckpointError(f'{name} {_file_kind(path)} ({_weights_only_detail(message)}).{extra}') from None
    except (PermissionError, IsADirectoryError, FileNotFoundError):
        raise
    except (
        EOFError,
        KeyError,
        IndexError,
        ValueError,
        zipfile.BadZipFile,
        UnicodeDecodeError,
        OverflowError,
        OSError,
    ) as error:  # torch's zip reader fails on some truncated files with EINVAL
        detail = f' ({type(error).__name__}: {error})' if str(error) else ''
        raise CheckpointError(f'{name} {_file_kind(path)}{detail}.{extra}') from None
    except RuntimeError as error:
        message = str(error)
        if re.search(r'PytorchStreamReader|corrupt|EOF|magic number|zip archive', message, re.I):
            raise CheckpointError(f'{name} {_file_kind(path)} ({message.split(". ")[0]}).{extra}') from None
        raise CheckpointError(f'cannot load {name}: {message}') from error


def _load_file(path: str, map_location='cpu', name: Optional[str] = None, extra: str = ''):
    """A local file, loaded safely; ``name`` (default: the path) is how errors refer to it."""
    name = name or path
    if not os.path.isfile(path):
        what = ' (it is a directory)' if os.path.isdir(path) else ''
        raise FileNotFoundError(f'checkpoint {name} does not exist{what}')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'{name} is empty (0 bytes), not a checkpoint: an interrupted download or copy?{extra}')
    return _torch_load(path, name, map_location, path=path, extra=extra)


def safe_load(filename, map_location='cpu'):
    """``torch.load(filename, weights_only=True)`` with :data:`SAFE_CHECKPOINT_GLOBALS` allowed, for a local
    path or a file object. Errors name the file: :class:`CheckpointError` (empty, truncated, not a
    checkpoint), :class:`UnsafeCheckpointError` (a refused global), FileNotFoundError."""
    if isinstance(filename, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(filename))
        return _load_file(path, map_location)
    return _torch_load(filename, getattr(filename, 'name', repr(filename)), map_location)


def _hub_checkpoint_dir() -> str:
    """Where torch.hub (and so mmengine's http loader) caches downloaded checkpoints."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def download_checkpoint(url: str, hint: Optional[str] = None, progress: Optional[bool] = None) -> str:
    """The local path of ``url`` in torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints/<file name>``,
    the directory torch.hub and mmengine use), downloaded there first unless it is already cached.

    Only downloads; nothing is unpickled. Raises :class:`CheckpointDownloadError` naming the URL, the cache
    file and ``hint`` (default :data:`OFFLINE_HINT`) when it cannot be fetched.
    """
    file_name = os.path.basename(urlparse(url).path)
    if not file_name:
        raise ValueError(f'checkpoint URL {url} names no file')
    model_dir = _hub_checkpoint_dir()
    cached = os.path.join(model_dir, file_name)
    if os.path.isfile(cached):
        return cached
    os.makedirs(model_dir, exist_ok=True)
    print_log(f'Downloading {url} to {cached}', logger='current')
    try:
        torch.hub.download_url_to_file(url, cached, None, progress=os.isatty(0) if progress is None else progress)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
        if isinstance(error, urllib.error.HTTPError):
            reason = f'HTTP {error.code} {error.reason}'
        else:
            reason = str(getattr(error, 'reason', None) or error) or type(error).__name__
        raise CheckpointDownloadError(
            f'could not fetch checkpoint {url} ({reason}). {hint or OFFLINE_HINT} Or copy the file to {cached}: '
            'it is looked up there before any download.',
            url=url,
            cached_file=cached,
        ) from error
    return cached


def _dist_info() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _load_url(url: str, map_location, hint: Optional[str]):
    # as mmengine's load_from_http: rank 0 downloads first, the other ranks then find it in the cache
    rank, world_size = _dist_info()
    path = download_checkpoint(url, hint) if rank == 0 else None
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            path = download_checkpoint(url, hint)
    name = f'{path} (downloaded from {url})'
    extra = f' Delete {path} to download it again.'
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(archive.infolist()) == 1 and len(members) == 1:  # torch.hub's legacy zip: one torch.save file
                with archive.open(members[0]) as member:
                    return _torch_load(io.BytesIO(member.read()), name, map_location, extra=extra)
    return _load_file(path, map_location, name=name, extra=extra)


def _model_zoo_url(location: str, prefix: str, urls: dict, deprecated: Optional[dict] = None) -> str:
    model_name = location[len(prefix) :]
    if deprecated and model_name in deprecated:
        print_log(
            f'{prefix}{model_name} is deprecated in favor of {prefix}{deprecated[model_name]}',
            logger='current',
            level=logging.WARNING,
        )
        model_name = deprecated[model_name]
    if model_name not in urls:
        raise CheckpointError(f'{location}: {prefix} knows no model {model_name!r}')
    return urls[model_name]


def _load_torchvision(location, map_location, hint):
    from mmengine.runner import checkpoint as mmengine_checkpoint

    prefix = 'modelzoo://' if location.startswith('modelzoo://') else 'torchvision://'
    if prefix == 'modelzoo://':
        print_log(
            'The URL scheme of "modelzoo://" is deprecated, please use "torchvision://" instead',
            logger='current',
            level=logging.WARNING,
        )
    url = _model_zoo_url(location, prefix, mmengine_checkpoint.get_torchvision_models())
    return _load_url(url, map_location, hint)


def _load_openmmlab(location, map_location, hint):
    from mmengine.runner import checkpoint as mmengine_checkpoint

    prefix = 'open-mmlab://' if location.startswith('open-mmlab://') else 'openmmlab://'
    url = _model_zoo_url(
        location, prefix, mmengine_checkpoint.get_external_models(), mmengine_checkpoint.get_deprecated_model_names()
    )
    if url.startswith(('http://', 'https://')):
        return _load_url(url, map_location, hint)
    return _load_file(os.path.join(mmengine_checkpoint._get_mmengine_home(), url), map_location)


def _load_mmcls(location, map_location, hint):
    from mmengine.runner import checkpoint as mmengine_checkpoint

    url = _model_zoo_url(location, 'mmcls://', mmengine_checkpoint.get_mmcls_models())
    return mmengine_checkpoint._process_mmcls_checkpoint(_load_url(url, map_location, hint))


def _load_ceph(location, map_location, hint):
    from mmengine.fileio import get_file_backend

    backend = get_file_backend(location, backend_args={'backend': 'petrel'})
    return _torch_load(io.BytesIO(backend.get(location)), location, map_location)


def _load_pavi(location, map_location, hint):
    from tempfile import TemporaryDirectory

    try:
        from pavi import modelcloud
    except ImportError:
        raise ImportError('Please install pavi to load checkpoint from modelcloud.')
    model = modelcloud.get(location[len('pavi://') :])
    with TemporaryDirectory() as tmp_dir:
        downloaded = os.path.join(tmp_dir, model.name)
        model.download(downloaded)
        return _load_file(downloaded, map_location, name=f'{location} (downloaded to {downloaded})')


def _load_local(location, map_location, hint):
    return _load_file(os.path.expanduser(location), map_location)


# mmengine's checkpoint schemes (regular expressions matched at the start, as CheckpointLoader does) -> ours
_SCHEMES: dict = {
    'http://': ('http', lambda loc, m, h: _load_url(loc, m, h)),
    'https://': ('http', lambda loc, m, h: _load_url(loc, m, h)),
    'torchvision://': ('torchvision', _load_torchvision),
    'modelzoo://': ('torchvision', _load_torchvision),
    'open-mmlab://': ('openmmlab', _load_openmmlab),
    'openmmlab://': ('openmmlab', _load_openmmlab),
    'mmcls://': ('mmcls', _load_mmcls),
    'pavi://': ('pavi', _load_pavi),
    r'(\S+\:)?s3://': ('ceph', _load_ceph),
    r'(\S+\:)?petrel://': ('ceph', _load_ceph),
    '': ('local', _load_local),
}


def load_checkpoint_file(location: Union[str, os.PathLike], map_location='cpu', hint: Optional[str] = None) -> dict:
    """Load a checkpoint from anywhere without ever unpickling arbitrary objects.

    Args:
        location: a local path (``~`` expanded), an ``http://`` / ``https://`` URL, or any mmengine scheme
            (``open-mmlab://``, ``openmmlab://``, ``torchvision://``, ``modelzoo://``, ``mmcls://``,
            ``s3://``, ``petrel://``, ``pavi://``). URLs (also those the model-zoo names resolve to) are
            downloaded into torch hub's checkpoint directory, ``$TORCH_HOME/hub/checkpoints/<file name>``,
            as mmengine and torch.hub do, and read from there on later calls.
        map_location: as in :func:`torch.load`.
        hint: how to point at a local file instead, appended to the error when a URL cannot be fetched
            (default :data:`OFFLINE_HINT`, which names the config and timm ways).

    Returns:
        The checkpoint as saved (usually a dict; for ``mmcls://`` mmengine's converted ``state_dict``).

    Every file is loaded with ``torch.load(weights_only=True)`` and only :data:`SAFE_CHECKPOINT_GLOBALS`
    allowed. Errors name the file or URL:

    * FileNotFoundError: a local file does not exist;
    * :class:`UnsafeCheckpointError` (an ``UnpicklingError``): the file asks for another global (named);
    * :class:`CheckpointDownloadError` (a ``ConnectionError``): the URL could not be fetched;
    * :class:`CheckpointError`: the file is empty, truncated or not a checkpoint.
    """
    location = os.fspath(location)
    for prefix, (_, load) in _SCHEMES.items():
        if prefix and re.match(prefix, location):
            return load(location, map_location, hint)
    try:
        from mmengine.runner.checkpoint import CheckpointLoader

        schemes = CheckpointLoader._schemes
    except ImportError:
        schemes = {}
    for prefix, loader in schemes.items():
        if prefix and prefix not in _SCHEMES and re.match(prefix, location):
            # a scheme another package registered with mmengine: its own loader, under the allow-list
            return _restricted(loader)(location, map_location)
    return _load_local(location, map_location, hint)


def _scheme_loader(kind: str) -> Callable:
    def loader(filename, map_location=None):
        return load_checkpoint_file(filename, map_location)

    loader.__name__ = loader.__qualname__ = f'load_from_{kind}'  # mmengine logs the name after 'load_from_'
    loader._mmcluster_safe = loader._mmcluster_scheme = True
    return loader


def _restricted(loader: Callable) -> Callable:
    """A loader of a scheme mmcluster does not know, run with the allow-list (its own torch.load calls that
    pass ``weights_only=True`` or nothing then accept mmengine checkpoints and nothing more)."""
    if getattr(loader, '_mmcluster_safe', False):
        return loader

    @functools.wraps(loader)
    def load(*args, **kwargs):
        with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
            return loader(*args, **kwargs)

    load._mmcluster_safe = True
    return load


def install_safe_checkpoint_loading() -> None:
    """Register :func:`load_checkpoint_file` for every mmengine checkpoint scheme (local files, http(s),
    open-mmlab://, torchvision://, ...): download, then ``weights_only=True`` with
    :data:`SAFE_CHECKPOINT_GLOBALS`. Schemes that mmcluster does not know keep their loader, run under
    the allow-list. Idempotent."""
    if not hasattr(torch.serialization, 'safe_globals'):
        raise RuntimeError(f'mmcluster needs torch >= 2.6 for safe checkpoint loading, found {torch.__version__}')
    from mmengine.runner.checkpoint import CheckpointLoader

    loaders = {}
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        if prefix in _SCHEMES:
            kind = _SCHEMES[prefix][0]
            loader = loaders.setdefault(kind, _scheme_loader(kind))
        CheckpointLoader.register_scheme(prefix, _restricted(loader), force=True)


def check_checkpoint_fits(
    model: nn.Module,
    checkpoint: dict,
    source: str,
    revise_keys: Iterable[tuple[str, str]] = ((r'^module\.', ''),),
) -> 'OrderedDict[str, torch.Tensor]':
    """The weights of ``checkpoint`` for ``model``, after checking that they fit it exactly.

    The weights are read as mmengine's Runner reads them (the ``'state_dict'`` entry, or the checkpoint
    itself; ``revise_keys`` applied, by default a DataParallel ``module.`` prefix removed). Raises
    :class:`CheckpointMismatchError` naming ``source`` and listing every shape mismatch, every key the
    checkpoint lacks (BatchNorm ``num_batches_tracked`` counters excepted, as mmengine does) and every key
    the model lacks.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{source} holds a {type(checkpoint).__name__}, not a checkpoint dict')
    state_dict = checkpoint['state_dict'] if 'state_dict' in checkpoint else checkpoint
    for pattern, replacement in revise_keys:
        state_dict = OrderedDict(
            (re.sub(pattern, replacement, k) if isinstance(k, str) else k, v) for k, v in state_dict.items()
        )
    own = model.state_dict()
    shapes = [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in state_dict.items()
        if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state_dict and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in own]
    if shapes or missing or unexpected:
        fitting = sum(
            1
            for k, v in state_dict.items()
            if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(own[k].shape)
        )
        lines = [f'{source} does not fit {type(model).__name__}: {fitting} of its {len(own)} tensors match.']
        if shapes:
            lines.append(
                f'shape mismatch ({len(shapes)}): '
                + _short_list((f'{k} (checkpoint {c}, model {m})' for k, c, m in shapes), 50)
            )
        if missing:
            lines.append(f'missing in the checkpoint ({len(missing)}): {_short_list(missing, 50)}')
        if unexpected:
            lines.append(f'unexpected in the checkpoint ({len(unexpected)}): {_short_list(unexpected, 50)}')
        if 'state_dict' not in checkpoint and not fitting:
            lines.append(f"The checkpoint has no 'state_dict' entry; its top-level keys: {_short_list(checkpoint, 8)}.")
        lines.append("Is it a checkpoint of this config's model?")
        raise CheckpointMismatchError('\n'.join(lines), shapes, missing, unexpected)
    return state_dict


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
        state_dict = {k[len('module.') :]: v for k, v in state_dict.items()}
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
        return (
            f'LoadReport(loaded={len(self.loaded)}, reinitialized={len(self.reinitialized)}, '
            f'missing={len(self.missing)}, unexpected={len(self.unexpected)}, ignored={len(self.ignored)})'
        )


def _short_list(keys: Iterable[str], limit: int = 20) -> str:
    keys = [str(k) for k in keys]
    text = ', '.join(keys[:limit])
    return text + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def load_pretrained(
    module: nn.Module,
    checkpoint: str,
    prefix: Optional[str] = None,
    convert: Optional[Callable[[dict], dict]] = None,
    may_reinit: Optional[Callable[[str], bool]] = None,
    ignore_unexpected: Iterable[str] = (),
    logger: Union[str, logging.Logger] = 'current',
    hint: Optional[str] = None,
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
        hint: how to use a local file instead, for the error when a URL cannot be fetched (default
            :data:`OFFLINE_HINT`).

    The file is read by :func:`load_checkpoint_file` (URLs downloaded to torch hub's cache, never
    unpickling anything outside :data:`SAFE_CHECKPOINT_GLOBALS`).

    Raises:
        FileNotFoundError: the file does not exist (never skipped silently).
        CheckpointError: the file is empty, truncated, not a checkpoint, unsafe (:class:`UnsafeCheckpointError`)
            or cannot be downloaded (:class:`CheckpointDownloadError`).
        ValueError: nothing in the checkpoint matches, or a shape mismatch that ``may_reinit`` does not allow.
    """
    print_log(f'Loads checkpoint from {checkpoint}', logger=logger)
    raw = load_checkpoint_file(checkpoint, map_location='cpu', hint=hint)
    state_dict = extract_state_dict(raw)
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    if prefix:
        state_dict = OrderedDict((k[len(prefix) :], v) for k, v in state_dict.items() if k.startswith(prefix))
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
            ignored = ignore_unexpected and key.startswith(ignore_unexpected)
            (report.ignored if ignored else report.unexpected).append(key)
        elif own[key].shape != value.shape:
            entry = (key, tuple(value.shape), tuple(own[key].shape))
            (report.reinitialized if may_reinit is not None and may_reinit(key) else wrong_shape).append(entry)
        else:
            to_load[key] = value
            report.loaded.append(key)
    if wrong_shape:
        raise ValueError(
            f'{checkpoint} does not fit {type(module).__name__}: shape mismatch for '
            + _short_list(f'{k} (checkpoint {c}, model {m})' for k, c, m in wrong_shape)
        )
    if not to_load:
        raise ValueError(f'no tensor of {checkpoint} matches {type(module).__name__}: is it the right model?')
    report.missing = [k for k in own if k not in to_load and k not in {r[0] for r in report.reinitialized}]
    module.load_state_dict(to_load, strict=False)

    name = type(module).__name__
    print_log(f'{name}: loaded {len(report.loaded)}/{len(own)} tensors from {checkpoint}', logger=logger)
    if report.reinitialized:
        print_log(
            f'{name}: re-initialised (shape differs from the checkpoint): '
            + _short_list(f'{k} {c} -> {m}' for k, c, m in report.reinitialized),
            logger=logger,
        )
    if report.missing:
        print_log(
            f'{name}: missing in the checkpoint, left initialised: {_short_list(report.missing)}',
            logger=logger,
            level=logging.WARNING,
        )
    if report.unexpected:
        print_log(
            f'{name}: unexpected in the checkpoint, not loaded: {_short_list(report.unexpected)}',
            logger=logger,
            level=logging.WARNING,
        )
    if report.ignored:
        print_log(
            f'{name}: ignored {len(report.ignored)} checkpoint tensors ({_short_list(report.ignored, 4)})',
            logger=logger,
        )
    return report
