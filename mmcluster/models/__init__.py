"""mmcluster's models. Importing this registers the timm classifiers (torch, timm and einops only); the
decode heads need mmseg and are imported on first use (``mmcluster.models.PaCaHead``, or through mmseg's
registry, see :mod:`mmcluster.registry`)."""

from .backbones import *  # noqa: F401,F403

_DECODE_HEADS = ('PaCaHead',)


def __getattr__(name: str):
    if name in _DECODE_HEADS:
        from . import decode_heads

        return getattr(decode_heads, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
