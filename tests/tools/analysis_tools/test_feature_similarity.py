"""tools/analysis_tools/feature_similarity.py (the Expedite paper's Table 1: cosine similarity of the reconstructed
features to the original ones, per block after the clustering) on a tiny Segmenter ViT derived from the 28x28
config with --cfg-options."""

import json

import pytest
import torch
from mmseg.models.backbones import VisionTransformer

from tests.tools_helpers import load_tool

CONFIG = 'configs/expedite/segmenter_vit-l-hourglass-28x28_mask_8xb1-160k_ade20k-640x640.py'
SHAPE = ['--shape', '64', '96']  # patch 16: a 4 x 6 token grid
HOURGLASS_KEYS = (
    'cluster_after',
    'cluster_grid',
    'num_iters',
    'neighbourhood_size',
    'temperature',
    'reconstruct',
    'num_neighbours',
    'reconstruction_temperature',
)


def tiny(cluster_grid='(2,3)', cluster_after=1):
    """--cfg-options turning the config's Segmenter ViT-L into a 4-block ViT of width 32 (and a small head)."""
    return [
        'model.backbone.img_size=(64,96)',
        'model.backbone.embed_dims=32',
        'model.backbone.num_layers=4',
        'model.backbone.num_heads=2',
        'model.backbone.mlp_ratio=2',
        f'model.backbone.cluster_after={cluster_after}',
        f'model.backbone.cluster_grid={cluster_grid}',
        'model.backbone.num_iters=2',
        'model.backbone.neighbourhood_size=3',
        'model.backbone.num_neighbours=4',
        'model.backbone.drop_path_rate=0.0',
        'model.decode_head.in_channels=32',
        'model.decode_head.channels=32',
        'model.decode_head.embed_dims=32',
        'model.decode_head.num_heads=2',
        'model.decode_head.num_layers=1',
        'model.decode_head.num_classes=5',
    ]


@pytest.fixture(scope='module')
def tool():
    return load_tool('tools/analysis_tools/feature_similarity.py')


def run(tool, *args, options=None):
    return tool.main([CONFIG, *args, *SHAPE, '--cfg-options', *(options or tiny())])


@pytest.fixture
def png(tmp_path):
    """Two small RGB images of other sizes than the input shape (resized by the tool)."""
    from PIL import Image

    paths = []
    for i, size in enumerate(((70, 50), (40, 90))):
        generator = torch.Generator().manual_seed(i)
        pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=generator).numpy()
        path = tmp_path / f'image{i}.png'
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize('cluster_grid', ['(4,6)', '(28,28)'])
def test_cluster_grid_of_the_token_grid_gives_similarity_one(tool, capsys, cluster_grid):
    """Nothing clustered (the grid equals the token grid, or is larger and reduced to it): the hourglass
    features are the original ones."""
    result = run(tool, '--alpha', '1', '2', '3', options=tiny(cluster_grid))
    assert len(result['rows']) == 3 + 2 + 1
    for row in result['rows']:
        assert row['mean'] == pytest.approx(1, abs=1e-6) and row['min'] == pytest.approx(1, abs=1e-6)
    out = capsys.readouterr().out
    assert '4x6 tokens -> 4x6 clusters (nothing clustered)' in out
    assert 'random (seed 0)' in out and 'one random normal input of 64x96' in out


def test_smaller_cluster_grid_and_alpha(tool, capsys):
    result = run(tool)  # the config's alpha: cluster_after = 1
    rows = result['rows']
    assert [(r['alpha'], r['block'], r['alpha_beta']) for r in rows] == [(2, 'layers.2', 3), (2, 'layers.3', 4)]
    for row in rows:
        assert -1 < row['min'] <= row['mean'] < 1 - 1e-3
        assert row['tokens'] == 4 * 6  # one random input, every token compared
    assert result['alphas'][0]['grids'] == ((4, 6), (2, 3))
    table = capsys.readouterr().out
    assert 'alpha = 2 (cluster_after = 1, 4x6 tokens -> 2x3 clusters)' in table
    assert f'layers.3  {4:10d}  {rows[1]["mean"]:8.4f}' in table

    both = run(tool, '--alpha', '3', '1')
    assert [(r['alpha'], r['block'], r['alpha_beta']) for r in both['rows']] == [
        (3, 'layers.3', 4),
        (1, 'layers.1', 2),
        (1, 'layers.2', 3),
        (1, 'layers.3', 4),
    ]
    # the last block's similarity depends on where the clustering is: one value for each of alpha = 2, 3, 1
    assert len({round(r['mean'], 6) for r in both['rows'] if r['block'] == 'layers.3'} | {rows[1]['mean']}) == 3


@pytest.mark.parametrize('alpha', ['4', '0'])
def test_bad_alpha_is_named(tool, capsys, alpha):
    with pytest.raises(SystemExit):
        run(tool, '--alpha', '2', alpha)
    err = capsys.readouterr().err
    # the tool names the argument; the backbone's constructor says why (at least one block on the centres)
    assert f'error: --alpha {alpha} (cluster_after = {int(alpha) - 1}): cluster_after must be in' in err
    assert '[0, 2]' in err


def test_missing_checkpoint_and_image_are_named(tool, capsys, tmp_path):
    missing = tmp_path / 'no_such.pth'
    with pytest.raises(SystemExit):
        run(tool, '--checkpoint', str(missing))
    assert f'--checkpoint: checkpoint {missing} does not exist' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(tool, str(tmp_path / 'no_such.png'))
    assert f'image {tmp_path / "no_such.png"} does not exist' in capsys.readouterr().err
    not_image = tmp_path / 'text.png'
    not_image.write_text('not an image')
    with pytest.raises(SystemExit):
        run(tool, str(not_image))
    assert f'{not_image} is not an image' in capsys.readouterr().err


def test_config_without_hourglass_backbone(tool, capsys):
    with pytest.raises(SystemExit):
        tool.main(['configs/demo/paca-head_paca-tiny_shapes.py', *SHAPE])
    assert 'no cluster_after: not an Expedite backbone' in capsys.readouterr().err


def test_images_json_and_checkpoint(tool, tmp_path, png):
    """Image files, --json, and a checkpoint of the whole model (weights drawn with seed 1) giving what random
    weights of seed 1 give: the checkpoint is what runs."""
    out = tmp_path / 'out' / 'sim.json'
    result = run(tool, *png, '--seed', '1', '--json', str(out))
    saved = json.loads(out.read_text())
    assert saved['rows'] == json.loads(json.dumps(result['rows'])) and len(saved['rows']) == 2
    assert saved['images'] == png and saved['shape'] == [64, 96] and saved['checkpoint'] is None
    assert all(row['tokens'] == 2 * 4 * 6 for row in saved['rows'])

    from mmcluster.apis import load_config

    cfg = load_config(CONFIG, _options(tiny()))
    model = tool.build_reference(cfg, None, 'cpu', seed=1)
    checkpoint = tmp_path / 'seed1.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    loaded = run(tool, *png, '--checkpoint', str(checkpoint))
    assert [r['mean'] for r in loaded['rows']] == pytest.approx([r['mean'] for r in result['rows']], abs=1e-12)
    assert loaded['weights'] == str(checkpoint)
    seed0 = run(tool, *png)
    assert [r['mean'] for r in seed0['rows']] != pytest.approx([r['mean'] for r in result['rows']], abs=1e-6)


def _options(options):
    """--cfg-options strings as the dict DictAction makes of them."""
    import argparse

    from mmengine.config import DictAction

    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *options]).cfg_options


@torch.no_grad()
def test_originals_are_the_upstream_vits_block_outputs(tool):
    """What the tool compares against (the features inside full_resolution()) are mmseg's VisionTransformer's
    block outputs with the same weights, class token dropped; the reconstructed ones are the hourglass
    forward's, through patch_tokens."""
    from mmcluster.apis import load_config

    cfg = load_config(CONFIG, _options(tiny()))
    state_dict = tool.build_reference(cfg, None, 'cpu', seed=0).backbone.state_dict()
    backbone = tool.hourglass_backbone(cfg, 2, state_dict)
    kwargs = {k: v for k, v in cfg.model.backbone.items() if k not in HOURGLASS_KEYS + ('type', 'init_cfg')}
    upstream = VisionTransformer(**kwargs)
    upstream.load_state_dict(state_dict, strict=True)
    upstream.eval()
    captured = {}
    for i, layer in enumerate(upstream.layers):
        layer.register_forward_hook(lambda m, args, out, name=f'layers.{i}': captured.__setitem__(name, out))

    image = torch.randn(2, 3, 64, 96)
    originals, reconstructed = tool.block_features(backbone, image)
    upstream(image)
    assert list(originals) == list(reconstructed) == ['layers.2', 'layers.3']
    for name, tokens in originals.items():
        assert tokens.shape == (2, 24, 32)
        torch.testing.assert_close(tokens, captured[name][:, 1:], rtol=0, atol=0)
    # the hourglass forward (the last one) ran on 2 x 3 centres; its blocks' outputs are reconstructed
    assert backbone.clusters is not None and backbone.clusters.cluster_grid == (2, 3)
    assert reconstructed['layers.3'].shape == (2, 24, 32)
    assert not torch.allclose(reconstructed['layers.3'], originals['layers.3'])

    result = tool.feature_similarity(backbone, [image[:1], image[1:]], alpha=2)
    expected = torch.nn.functional.cosine_similarity(
        reconstructed['layers.3'].double(), originals['layers.3'].double(), dim=-1
    )
    assert result['rows'][1]['mean'] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert result['rows'][1]['tokens'] == 48
