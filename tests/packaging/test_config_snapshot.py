"""Every config merges to exactly the dict recorded in config_snapshot.json.

The snapshot was taken before the ADE20K recipes were split into configs/_base_/ (schedules, dataset batch,
PaCa-head model), so this shows the split changed nothing; it also catches any later unintended change to
a merged config, including one coming from an mmdet / mmseg base. After an intended change (or a new
config, or another mmdet / mmseg version), regenerate it and review the diff:

    .venv/bin/python -m tests.packaging.test_config_snapshot --update
"""

import json
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from tests.packaging.helpers import cache_metafile_reads
from tests.tools_helpers import ROOT

SNAPSHOT = Path(__file__).with_name('config_snapshot.json')
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / 'configs').rglob('*.py') if '_base_' not in p.parts)


def encode(value):
    """JSON with tuples kept apart from lists (`{"__tuple__": [...]}`), as configs use both."""
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return {'__tuple__': [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f'unexpected {type(value).__name__} in a config: {value!r}')


def merged(rel: str) -> dict:
    return json.loads(json.dumps(encode(Config.fromfile(str(ROOT / rel)).to_dict())))


def differences(expected, actual, path='') -> list:
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(expected) | set(actual)):
            if key not in actual:
                out.append(f'{path}.{key}: removed')
            elif key not in expected:
                out.append(f'{path}.{key}: added {actual[key]!r}')
            else:
                out += differences(expected[key], actual[key], f'{path}.{key}')
        return out
    return [] if expected == actual else [f'{path}: {expected!r} -> {actual!r}']


def test_snapshot_lists_every_config():
    assert len(CONFIGS) >= 45
    assert sorted(json.loads(SNAPSHOT.read_text())) == CONFIGS, 'configs added or removed: regenerate the snapshot'


def test_merged_configs_equal_the_snapshot(monkeypatch):
    cache_metafile_reads(monkeypatch)
    snapshot = json.loads(SNAPSHOT.read_text())
    problems = []
    for rel in CONFIGS:
        problems += [f'{rel}{d}' for d in differences(snapshot.get(rel), merged(rel))]
    assert not problems, '\n'.join(problems[:50])


def test_differences_are_reported():
    """The comparison itself: a changed, an added and a removed key, tuple vs list."""
    before = encode(dict(a=(1, 2), b=dict(c=1, d=2)))
    after = encode(dict(a=[1, 2], b=dict(c=3, e=2)))
    assert differences(before, after) == [
        ".a: {'__tuple__': [1, 2]} -> [1, 2]",
        '.b.c: 1 -> 3',
        '.b.d: removed',
        '.b.e: added 2',
    ]


if __name__ == '__main__':
    if sys.argv[1:] != ['--update']:
        sys.exit('usage: python -m tests.packaging.test_config_snapshot --update')
    import mmcluster  # noqa: F401

    with pytest.MonkeyPatch.context() as mp:
        cache_metafile_reads(mp)
        SNAPSHOT.write_text(json.dumps({rel: merged(rel) for rel in CONFIGS}, indent=1, sort_keys=True) + '\n')
    print(f'wrote {SNAPSHOT} ({len(CONFIGS)} configs)')
