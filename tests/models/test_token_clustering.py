"""Expedite's token clustering and token reconstruction layers (paper Eqns. 2-4; spec §2, §3, §12).

The references here are written out from the spec independently of mmcluster's module: clustering with a
Python loop over tokens in float64 (adaptive-pooling bins written out, cells from a nearest-resized label
grid as the official code builds them, explicit differences instead of the norm expansion), and the
official reconstruction formula (raw ``exp(-tau * d)``, top-k of the weights, ``F.normalize``)."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmcluster.models.layers.token_clustering import (
    TokenClustering,
    TokenClusters,
    TokenReconstruction,
    cluster_tokens,
    cluster_tokens_local,
    local_assignment,
    neighbourhood_index,
    neighbourhood_mask,
    reconstruction_weights,
)


def smooth_tokens(batch, grid, channels, scale=1.0, seed=0):
    """(B, H*W, C) tokens of a smooth random map plus noise, so that clusters are neither one-hot nor flat."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, channels, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=grid, mode='bilinear', align_corners=False)
    noisy = smooth + 0.3 * torch.randn(batch, channels, *grid, generator=generator)
    return (scale * noisy).flatten(2).transpose(1, 2).contiguous()


def reference_clustering(tokens, grid, cluster_grid, num_iters, neighbourhood_size, temperature):
    """Spec §2 for one image, (N, C) -> (M, C), float64, a loop over tokens."""
    (H, W), (h, w) = grid, cluster_grid
    tokens = tokens.double()
    token_map = tokens.view(H, W, -1)
    bins = [
        token_map[i * H // h : math.ceil((i + 1) * H / h), j * W // w : math.ceil((j + 1) * W / w)].mean((0, 1))
        for i in range(h)
        for j in range(w)
    ]
    centres = torch.stack(bins)
    labels = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    cells = F.interpolate(labels, size=(H, W), mode='nearest').long().flatten()
    radius = neighbourhood_size // 2
    centre_rows, centre_cols = torch.arange(h * w) // w, torch.arange(h * w) % w
    for _ in range(num_iters):
        assignment = torch.zeros(H * W, h * w, dtype=torch.float64)
        for i in range(H * W):
            row, col = divmod(cells[i].item(), w)
            allowed = ((centre_rows - row).abs() <= radius) & ((centre_cols - col).abs() <= radius)
            dist = ((tokens[i] - centres[allowed]) ** 2).sum(-1)
            assignment[i, allowed] = (-temperature * dist).softmax(0)
        mass = assignment.sum(0).clamp_min(1e-16)
        centres = (assignment.T @ tokens) / mass[:, None]
    return centres


def official_weights(tokens, centres, k, temperature):
    """Spec §3 verbatim: raw exp of the clamped distances, top-k of the weights (ties kept), L2 rows."""
    norms = tokens.pow(2).sum(-1, keepdim=True) + centres.pow(2).sum(-1).unsqueeze(1)
    dist = (norms - 2 * tokens @ centres.transpose(1, 2)).clamp_min(0)
    weights = torch.exp(-temperature * dist)
    kth = weights.topk(k, dim=-1).values[..., -1:]
    return F.normalize(weights * (weights >= kth), p=2, dim=-1)


@pytest.mark.parametrize(
    'grid, cluster_grid, neighbourhood_size, temperature',
    [
        ((13, 17), (4, 5), 3, 0.02),  # not divisible, small lambda
        ((37, 53), (8, 11), 5, 0.02),  # the brief's non-divisible case
        ((12, 12), (8, 8), 7, 0.05),  # a Swin window (spec §5, COCO panoptic)
        ((9, 7), (3, 7), 11, 0.1),  # lambda larger than the cluster grid; w == W
    ],
)
@pytest.mark.parametrize('form', [cluster_tokens, cluster_tokens_local])
def test_clustering_matches_reference(form, grid, cluster_grid, neighbourhood_size, temperature):
    tokens = smooth_tokens(2, grid, 8, scale=3.0)
    centres = form(tokens, grid, cluster_grid, 5, neighbourhood_size, temperature)
    assert centres.shape == (2, cluster_grid[0] * cluster_grid[1], 8)
    for image in range(2):
        expected = reference_clustering(tokens[image], grid, cluster_grid, 5, neighbourhood_size, temperature)
        torch.testing.assert_close(centres[image].double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


def test_dense_equals_gather_at_paper_grid():
    tokens = smooth_tokens(1, (40, 40), 32, scale=4.0)  # ~ ViT-L/16 at 640 x 640, narrower channels
    dense = cluster_tokens(tokens, (40, 40), (28, 28))
    local = cluster_tokens_local(tokens, (40, 40), (28, 28))
    torch.testing.assert_close(local, dense, rtol=1e-5, atol=1e-5 * dense.abs().max().item())


def test_zero_iterations_is_adaptive_average_pooling():
    tokens = smooth_tokens(1, (37, 53), 4)
    pooled = F.adaptive_avg_pool2d(tokens.transpose(1, 2).reshape(1, 4, 37, 53), (8, 11))
    torch.testing.assert_close(
        cluster_tokens(tokens, (37, 53), (8, 11), num_iters=0), pooled.flatten(2).transpose(1, 2)
    )


def test_batch_independence():
    tokens = smooth_tokens(2, (37, 53), 16, scale=3.0)
    clustering, reconstruction = TokenClustering(), TokenReconstruction()
    together = clustering(tokens, (37, 53), (8, 11))
    rebuilt = reconstruction(together.centres * 2, together)
    for image in range(2):
        alone = clustering(tokens[image : image + 1], (37, 53), (8, 11))
        torch.testing.assert_close(together.centres[image : image + 1], alone.centres)
        torch.testing.assert_close(rebuilt[image : image + 1], reconstruction(alone.centres * 2, alone))


def test_neighbourhood_constraint():
    grid, cluster_grid, size = (37, 53), (8, 11), 5
    mask = neighbourhood_mask(grid, cluster_grid, size)
    for i in (0, 52, 600, 37 * 53 - 1):  # corners and inner tokens
        y, x = divmod(i, 53)
        cell_row, cell_col = y * 8 // 37, x * 11 // 53
        expected = [abs(j // 11 - cell_row) <= 2 and abs(j % 11 - cell_col) <= 2 for j in range(88)]
        assert mask[i].tolist() == expected
    index, valid = neighbourhood_index(grid, cluster_grid, size)
    gathered = torch.zeros_like(mask).scatter_(1, index, valid)
    assert torch.equal(gathered, mask) and bool((index < 88).all())  # the local form sees exactly the allowed set

    tokens = smooth_tokens(1, grid, 8)  # unit scale: every allowed centre gets a positive weight
    centres = cluster_tokens(tokens, grid, cluster_grid, num_iters=2)
    assignment = local_assignment(tokens, centres, mask, temperature=0.02)[0]
    assert bool((assignment[~mask] == 0).all()) and bool((assignment[mask] > 0).all())
    torch.testing.assert_close(assignment.sum(-1), torch.ones(37 * 53))


def test_identity_when_cluster_grid_equals_token_grid():
    tokens = smooth_tokens(2, (12, 12), 8)
    clusters = TokenClustering()(tokens, (12, 12), (12, 12))
    assert clusters.identity and clusters.centres is tokens
    refined = torch.randn(2, 144, 5)
    assert TokenReconstruction()(refined, clusters) is refined

    # The official math alone is not the identity: at tau = 0.02, unit-scale neighbours get weight too...
    smoothed = cluster_tokens(tokens, (12, 12), (12, 12))
    assert (smoothed - tokens).abs().max() > 0.1
    weights = official_weights(tokens, tokens, 20, 0.02)
    assert (weights @ tokens - tokens).abs().max() > 0.1
    # ... it is only when neighbouring tokens are far apart (tau * d >> 1).
    far = 100 * tokens
    torch.testing.assert_close(cluster_tokens(far, (12, 12), (12, 12)), far)
    torch.testing.assert_close(official_weights(far, far, 20, 0.02) @ far, far)


def test_reconstruction_top_k_and_unit_l2_rows():
    tokens, centres = smooth_tokens(2, (37, 53), 16), smooth_tokens(2, (8, 11), 16, seed=1)
    weights = reconstruction_weights(tokens, centres, num_neighbours=20, temperature=0.02)
    assert weights.shape == (2, 37 * 53, 88)
    assert bool(((weights > 0).sum(-1) == 20).all())  # continuous data: no ties
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(2, 37 * 53))
    kept = weights.topk(20, dim=-1).indices.sort(-1).values
    nearest = torch.cdist(tokens, centres).topk(20, dim=-1, largest=False).indices.sort(-1).values
    assert torch.equal(kept, nearest)  # over all 88 centres, not the clustering neighbourhood
    assert bool(((reconstruction_weights(tokens, centres, num_neighbours=200) > 0).sum(-1) == 88).all())


def test_reconstruction_matches_official_formula():
    tokens = smooth_tokens(2, (37, 53), 16, scale=2.0)
    clusters = TokenClustering()(tokens, (37, 53), (8, 11))
    refined = torch.randn(2, 88, 150)  # C' != C, e.g. Segmenter's mask logits
    official = official_weights(tokens, clusters.centres, 20, 0.02)
    assert bool((official.sum(-1) > 0).all())  # well-conditioned: the official formula is fine here
    torch.testing.assert_close(reconstruction_weights(tokens, clusters.centres), official, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(TokenReconstruction()(refined, clusters), official @ refined, rtol=1e-5, atol=1e-5)


def test_reconstruction_has_no_zero_rows_where_official_has():
    tokens = smooth_tokens(1, (37, 53), 16, scale=40.0)  # the residual-stream scale of a large ViT
    centres = cluster_tokens(tokens, (37, 53), (8, 11))
    official = official_weights(tokens, centres, 20, 0.02)
    norms = official.norm(dim=-1)
    assert bool((norms == 0).any())  # fp32 exp underflows for every centre: all-zero rows
    # F.normalize's eps (1e-12) also shrinks the rows whose weights are all below ~1e-12 (tau * d_min > 27.6).
    assert bool(((norms > 0) & (norms < 0.5)).any())
    weights = reconstruction_weights(tokens, centres)
    assert bool(weights.isfinite().all()) and bool((weights.sum(-1) > 0).all())
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(1, 37 * 53))
    # Ours equals the official rows where they are normalised, and has their direction wherever they are not
    # zero: the official formula in float64 (no underflow here), rescaled to unit rows.
    unit = norms > 1 - 1e-6
    torch.testing.assert_close(weights[unit], official[unit], rtol=1e-5, atol=1e-6)
    exact = official_weights(tokens.double(), centres.double(), 20, 0.02)
    exact_norms = exact.norm(dim=-1, keepdim=True)
    assert bool((exact_norms > 0).all())
    torch.testing.assert_close(weights.double(), exact / exact_norms, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_and_low_precision_inputs(dtype):
    tokens = smooth_tokens(2, (37, 53), 16, scale=40.0)
    clustering, reconstruction = TokenClustering(), TokenReconstruction()
    reference = clustering(tokens, (37, 53), (8, 11))
    with torch.autocast(device_type='cpu', dtype=dtype):
        clusters = clustering(tokens, (37, 53), (8, 11))
        refined = torch.nn.functional.linear(clusters.centres, torch.eye(16))  # autocast: low-precision output
        rebuilt = reconstruction(refined, clusters)
    assert clusters.centres.dtype == torch.float32 and rebuilt.dtype == dtype
    torch.testing.assert_close(clusters.centres, reference.centres)
    assert bool(rebuilt.isfinite().all()) and bool((rebuilt.abs().sum(-1) > 0).all())

    low = clustering(tokens.to(dtype), (37, 53), (8, 11))  # a model converted with .half() / .bfloat16()
    rebuilt = reconstruction(low.centres, low)
    assert low.centres.dtype == dtype and rebuilt.dtype == dtype
    assert bool(rebuilt.isfinite().all()) and bool((rebuilt.abs().sum(-1) > 0).all())
    torch.testing.assert_close(low.centres.float(), reference.centres, rtol=0.05, atol=0.05 * 40)


def test_argument_errors():
    tokens = smooth_tokens(1, (12, 12), 4)
    with pytest.raises(ValueError, match='cluster_grid'):
        TokenClustering()(tokens, (12, 12), (13, 8))
    with pytest.raises(ValueError, match='cluster_grid'):
        cluster_tokens(tokens, (12, 12), (8, 0))
    with pytest.raises(ValueError, match='tokens'):
        TokenClustering()(tokens, (12, 11), (8, 8))
    with pytest.raises(ValueError, match='num_iters'):
        TokenClustering(num_iters=-1)
    for size in (0, 4, -3):
        with pytest.raises(ValueError, match='neighbourhood_size'):
            TokenClustering(neighbourhood_size=size)
    with pytest.raises(ValueError, match='neighbourhood_size'):
        cluster_tokens_local(tokens, (12, 12), (8, 8), neighbourhood_size=2)
    for layer in (TokenClustering, TokenReconstruction):
        with pytest.raises(ValueError, match='temperature'):
            layer(temperature=0.0)
    with pytest.raises(ValueError, match='num_neighbours'):
        TokenReconstruction(num_neighbours=0)
    with pytest.raises(ValueError, match='num_neighbours'):
        reconstruction_weights(tokens, tokens[:, :64], num_neighbours=0)
    clusters = TokenClustering()(tokens, (12, 12), (8, 8))
    with pytest.raises(ValueError, match='refined'):
        TokenReconstruction()(torch.randn(1, 63, 4), clusters)
    assert isinstance(clusters, TokenClusters) and not clusters.identity


def test_dense_clustering_macs_are_two_products_per_iteration():
    """What get_flops counts for the dense clustering (configs/expedite/README.md subtracts it to compare
    with the paper's counter): kappa iterations of the N x M distance product and the M-step product, each
    N * M * C multiply-accumulates, and nothing else."""
    from mmcluster.utils.flops import count_macs

    tokens = torch.randn(1, 12 * 15, 32)
    for num_iters in (1, 5):
        macs = count_macs(TokenClustering(num_iters=num_iters), tokens, (12, 15), (4, 5))
        assert macs == num_iters * 2 * (12 * 15) * (4 * 5) * 32
