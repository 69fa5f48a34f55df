"""Hooks mmcluster's modules into the OpenMMLab registries, for the packages that are installed.

``import mmcluster`` needs neither mmdet nor mmseg. For each of them that is installed, this adds one
module of ours to the import locations of its ``MODELS`` registry, so the registry imports it (and with
it what it needs, e.g. mmseg's ``BaseDecodeHead`` for the PaCa head) the first time it is used, right
after its own models. A registry that was already used imports ours at once.

* ``mmcluster.models.register_mmdet``: the backbones, in mmdet's MODELS;
* ``mmcluster.models.register_mmseg``: the backbones and decode heads, in mmseg's MODELS.
"""

from __future__ import annotations

import importlib
import importlib.util

# OpenMMLab package -> module of ours that registers into its MODELS registry
REGISTRATIONS = {'mmdet': 'mmcluster.models.register_mmdet', 'mmseg': 'mmcluster.models.register_mmseg'}


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def hook_into_registries() -> list[str]:
    """Make every installed OpenMMLab package's MODELS registry import mmcluster's modules; returns the
    packages hooked. Idempotent."""
    hooked = []
    for package, location in REGISTRATIONS.items():
        if not installed(package):
            continue
        models = importlib.import_module(f'{package}.registry').MODELS
        if models._imported:
            importlib.import_module(location)
        elif location not in models._locations:
            models._locations.append(location)
        hooked.append(package)
    return hooked
