"""One engine for mapping official checkpoints onto mmcluster's module layout, and the converters by family.

A :class:`RuleTable` is an ordered list of ``(regex, template)`` rules. Each key of the official state dict
must match one rule (the first that matches wins); the matched prefix is replaced by the template,
formatted with the regex groups (``{0}``, ``{1}``, ...) and with the named fields that the table's
``fields`` function derives from the groups and from the whole state dict. A key that matches no rule,
or two keys that land on the same name, raise an error naming them: nothing is dropped silently.

Each family registers a :class:`FamilyConverter` under its name (``paca_vit``, ...). Tools look converters
up here by family (or let :func:`detect_family` find it from the keys) instead of importing them by name.
Needs torch only.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

StateDict = 'OrderedDict[str, torch.Tensor]'


class RuleTable:
    """Strict key renaming by regex rules.

    Args:
        name: what the table converts, for error messages (e.g. ``'official PaCa-ViT backbone'``).
        rules: ``(pattern, template)`` pairs; a pattern matches a key's prefix (``re.match``), and the
            rest of the key after the match is appended to the formatted template.
        context: computed once per state dict, passed to ``fields`` (e.g. which blocks use MLP clustering).
        fields: ``fields(groups, context) -> dict`` of named template fields for one matched key.
    """

    def __init__(
        self,
        name: str,
        rules: Sequence[tuple[str, str]],
        context: Optional[Callable[[Mapping[str, torch.Tensor]], Any]] = None,
        fields: Optional[Callable[[tuple, Any], dict]] = None,
    ) -> None:
        self.name = name
        self.rules = [(re.compile(pattern), template) for pattern, template in rules]
        self.context = context
        self.fields = fields

    def rename(self, key: str, context: Any = None) -> str:
        for pattern, template in self.rules:
            match = pattern.match(key)
            if match is not None:
                groups = match.groups()
                extra = self.fields(groups, context) if self.fields is not None else {}
                return template.format(*groups, **extra) + key[match.end() :]
        raise KeyError(f'{self.name}: no conversion rule matches the key {key!r}')

    def __call__(self, state_dict: Mapping[str, torch.Tensor]) -> StateDict:
        context = self.context(state_dict) if self.context is not None else None
        converted: OrderedDict = OrderedDict()
        sources: dict[str, str] = {}
        for key, value in state_dict.items():
            new_key = self.rename(key, context)
            if new_key in converted:
                raise KeyError(f'{self.name}: keys {sources[new_key]!r} and {key!r} both map to {new_key!r}')
            converted[new_key] = value
            sources[new_key] = key
        return converted


@dataclass
class FamilyConverter:
    """How one family's official checkpoints map onto mmcluster's modules.

    Attributes:
        family: the family's name (``'paca_vit'``).
        is_official: whether a backbone state dict (no ``backbone.`` prefix) is in the official layout.
        backbone: the rule table for backbone (and classifier) keys.
        head: the rule table for the family's official decode head (keys without ``decode_head.``), if any.
        head_markers: key prefixes that mark a decode head in the official layout.
        may_reinit: keys whose shape depends on settings that downstream configs change (kept at their
            fresh initialisation when the shapes differ, and named in the log).
    """

    family: str
    is_official: Callable[[Mapping[str, torch.Tensor]], bool]
    backbone: RuleTable
    head: Optional[RuleTable] = None
    head_markers: tuple[str, ...] = ()
    may_reinit: Callable[[str], bool] = lambda key: False

    def convert_backbone(self, state_dict: Mapping[str, torch.Tensor]) -> StateDict:
        """A backbone or classifier state dict in the official layout, converted; ours, unchanged."""
        if not self.is_official(state_dict):
            return OrderedDict(state_dict)
        return self.backbone(state_dict)

    def convert_checkpoint(self, state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, str]:
        """Convert a whole official checkpoint: a classifier (``imagenet``), or a detector / segmentor whose
        ``backbone.*`` (and official ``decode_head.*``) keys are renamed while mmdet's / mmseg's own necks and
        heads are kept. Returns the converted state dict and its kind (``imagenet``, ``detection``,
        ``segmentation``)."""
        if not any(k.startswith('backbone.') for k in state_dict):
            if not self.is_official(state_dict):
                raise ValueError(f'not an official {self.family} state dict (its keys are not in the official layout)')
            return self.backbone(state_dict), 'imagenet'
        backbone, rest = _split(state_dict, 'backbone.')
        if not self.is_official(backbone):
            raise ValueError(f'the backbone.* keys are not in the official {self.family} layout')
        converted = OrderedDict((f'backbone.{k}', v) for k, v in self.backbone(backbone).items())
        head, rest = _split(rest, 'decode_head.')
        if self.head is not None and any(k.startswith(self.head_markers) for k in head):
            head = self.head(head)
        converted.update((f'decode_head.{k}', v) for k, v in head.items())
        converted.update(rest)
        return converted, 'segmentation' if head else 'detection'


def _split(state_dict: Mapping[str, torch.Tensor], prefix: str) -> tuple[OrderedDict, OrderedDict]:
    inside = OrderedDict((k[len(prefix) :], v) for k, v in state_dict.items() if k.startswith(prefix))
    outside = OrderedDict((k, v) for k, v in state_dict.items() if not k.startswith(prefix))
    return inside, outside


_CONVERTERS: dict[str, FamilyConverter] = {}


def register_converter(converter: FamilyConverter) -> FamilyConverter:
    if converter.family in _CONVERTERS:
        raise KeyError(f'a converter for {converter.family!r} is already registered')
    _CONVERTERS[converter.family] = converter
    return converter


def get_converter(family: str) -> FamilyConverter:
    if family not in _CONVERTERS:
        raise KeyError(f'no checkpoint converter for family {family!r}; known: {sorted(_CONVERTERS)}')
    return _CONVERTERS[family]


def families() -> list[str]:
    return sorted(_CONVERTERS)


def detect_family(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The family whose official layout ``state_dict`` (a classifier, or with ``backbone.*`` keys) uses."""
    backbone = _split(state_dict, 'backbone.')[0] or state_dict
    found = [name for name, converter in _CONVERTERS.items() if converter.is_official(backbone)]
    if len(found) != 1:
        raise ValueError(
            'the checkpoint is in no known official layout'
            if not found
            else f'the checkpoint matches several official layouts: {found}'
        )
    return found[0]
