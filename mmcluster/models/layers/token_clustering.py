"""Token clustering and token reconstruction of Expedite (Liang et al., "Expediting Large-Scale Vision
Transformer for Dense Prediction without Fine-tuning", NeurIPS 2022, Sec. 3, Eqns. 2-4): the two
parameter-free layers that turn a trained ViT or Swin into a high -> low -> high resolution one. Shared by
every wrapper (plain ViT: the whole token grid; Swin: each K x K window as a batch element).

Token clustering (:class:`TokenClustering`, spec §2). The layer-alpha tokens F (B, N = H*W, C, CLS left out)
become M = h*w centres S by local soft k-means: adaptive average pooling to (h, w) gives the initial centres
(Eqn. 2; overlapping bins, so h and w need not divide H and W), token (y, x) lives in cell
(floor(y*h/H), floor(x*w/W)) and may only be assigned to the centres within ``neighbourhood_size // 2`` cells
of it in both directions (lambda x lambda, nothing wraps, borders have fewer), and kappa EM steps follow
(Eqn. 3): the E-step is a softmax over the allowed centres of ``-temperature * ||t - s||^2`` (the temperature
multiplies the squared Euclidean distance, as in the official code: 0.02 in the Segmenter configs, spec §9,
the paper's "tau = 50" with a division), the M-step is the affinity-weighted mean of the tokens with the
denominator clamped at 1e-16 (spec §2.5; as in the official code, a centre whose total mass is below 1e-16
is shrunk towards the zero vector, and one that receives no mass at all becomes it). The centres after kappa
updates are the output.

Token reconstruction (:class:`TokenReconstruction`, spec §3). N tokens are rebuilt from the M refined
centres Z (any width C') as ``sum_m w_im z_m``, the weights computed from F and S (the centres before the
later layers refined them): ``exp(-temperature * ||f_i - s_m||^2)`` (distances clamped at 0) on the k nearest
centres among all M (entries tied with the k-th are kept, as in the official code), zero elsewhere.

* Normalisation: L2, as the official code (``F.normalize(p=2)`` along the centre axis, spec §3.4), not the
  sum of the paper's Eqn. 4 and listing 2. The two agree when one centre dominates; for flat weights the L2
  rows sum to up to sqrt(k), so the output is scaled by up to sqrt(k) (about 4.5 for k = 20). L2 is kept so
  that the official checkpoints' numbers are reproduced.
* All-zero rows: the official raw ``exp(-tau * d)`` underflows to 0 in fp32 for every centre when a token is
  far from all of them (``tau * d_min > ~103``; with tau = 0.02, ``||f - s|| > ~72`` to the nearest centre,
  which the residual stream of a large ViT can reach); the official row is then all zeros and the token is
  rebuilt as 0. Before that, ``F.normalize``'s eps (1e-12) already stops normalising once the row norm is
  below 1e-12 (``tau * d_min > ~27.6``; ``||f - s|| > ~37`` at tau = 0.02): the official row then has norm
  ``||w|| / 1e-12 < 1`` and the token fades towards 0. Here the weights are ``exp(-tau * (d - d_min))`` with
  ``d_min`` the row's smallest distance: the row's largest weight is exactly 1, so no row is ever zero and
  nothing is NaN. L2 normalisation divides out the constant factor ``exp(-tau * d_min)``, so the rows are the
  official ones wherever those are unit rows (``tau * d_min`` up to ~27.6), and the official rows' direction
  (rescaled to unit norm) wherever those are not zero; tests check both. The k nearest centres are chosen on
  the distances themselves (the same set as the official top-k of the weights, except where fp32 ``exp``
  rounds two different distances to the same weight or to 0).

Identity. With ``cluster_grid == grid`` the official math is *not* the identity: the initial centres are the
tokens, but the E-step gives the 24 neighbouring centres the weight ``exp(-tau * ||t_i - t_j||^2)`` (with
tau = 0.02 this is not negligible unless neighbouring tokens are more than ~30 apart), so kappa EM steps
smooth the tokens; likewise the official reconstruction with M = N and Z = S = F mixes each token with its
k - 1 nearest others and L2 normalisation rescales it. Wrappers need "no clustering" to give exactly the
unmodified model, so :class:`TokenClustering` returns the tokens themselves as the centres when
``cluster_grid == grid`` (the only way M can equal N, since h > H or w > W is rejected), and
:class:`TokenReconstruction` then returns the refined tokens unchanged (:attr:`TokenClusters.identity`).

Dense or local. The official code computes the dense N x M distance matrix and adds 1e16 to the disallowed
pairs (spec §2.3), at O(N*M*C) per iteration. :func:`cluster_tokens` is that dense form with a boolean mask
(``-inf`` logits, spec §12.6); :func:`cluster_tokens_local` gathers for each token only its at most
lambda^2 candidate centres (an (N, L) index with a validity mask, L = min(lambda, h) * min(lambda, w)), at
O(N*L*C) FLOPs, with a (B, N, L, C) gathered tensor and a scatter-add M-step. Both give the same centres up
to fp32 rounding (1e-7 to 4e-5 relative at C = 1024). Measured on the CPU (fp32, no grad, kappa = 5, best
of 3 after a warm-up, the two forms interleaved; ms with 1 thread / 2 threads: the machine's 2 cores were
shared with other work, which inflates and scatters the 2-thread times through waits at OpenMP barriers, so
the 1-thread times are the reliable ones):

    ============================================  ================  ================  ===============
    case (lambda = 5 unless given)                dense (ms)        local (ms)        local / dense
    ============================================  ================  ================  ===============
    ViT-L/16 @ 640 (40 x 40, C = 1024, B = 1):
      -> 8 x 8                                    32 / 20           991 / 866         31x / 43x
      -> 12 x 12                                  62 / 407          995 / 1503        16x / 3.7x
      -> 16 x 16                                  101 / 469         1038 / 1632       10x / 3.5x
      -> 20 x 20                                  151 / 421         989 / 1408        6.6x / 3.3x
      -> 24 x 24                                  214 / 311         1001 / 1456       4.7x / 4.7x
      -> 28 x 28 (the paper's setting)            306 / 832         1021 / 1634       3.3x / 2.0x
      -> 40 x 40 (no shortcut)                    626 / 1157        1033 / 1624       1.7x / 1.4x
    Swin-L @ 1152, 36 windows 12 x 12 -> 8 x 8,
    C = 768: lambda = 5                           98 / 507          2502 / 3028       26x / 6.0x
      lambda = 7                                  95 / 526          4831 / 5472       51x / 10x
    ============================================  ================  ================  ===============

The dense form is the default (:class:`TokenClustering` uses it): its two matrix products per iteration run
at BLAS speed, while the local form is bound by memory traffic (it moves N*L*C floats, 41M at lambda = 5 for
ViT-L, against the 1.3M-entry N x M matrix of the dense form), and it also needs far more memory (156 MiB
for ViT-L at 28 x 28, 744 MiB for the 36 Swin windows at lambda = 7, against 5 and 1.3 MiB). The local form
is kept as the cross-check of the dense one (tests).

Precision. Both layers run their arithmetic in fp32 with autocast disabled (spec §2.9: the masking and the
exponentials of large values do not survive fp16) and return in the dtype of their input (the tokens for
clustering, the refined tokens for reconstruction). Needs torch and einops only.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

Grid = Tuple[int, int]


def _pair(value: Union[int, Grid]) -> Grid:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f'temperature (tau) must be > 0, got {temperature}')


def _check_clustering_args(num_iters: int, neighbourhood_size: int, temperature: float) -> None:
    if num_iters < 0:
        raise ValueError(f'num_iters (kappa) must be >= 0, got {num_iters}')
    if neighbourhood_size < 1 or neighbourhood_size % 2 == 0:
        raise ValueError(f'neighbourhood_size (lambda) must be odd and >= 1, got {neighbourhood_size}')
    _check_temperature(temperature)


def _check_reconstruction_args(num_neighbours: int, temperature: float) -> None:
    if num_neighbours < 1:
        raise ValueError(f'num_neighbours (k) must be >= 1, got {num_neighbours}')
    _check_temperature(temperature)


def _check_grids(tokens: torch.Tensor, grid: Grid, cluster_grid: Grid) -> None:
    if tokens.dim() != 3 or tokens.shape[1] != grid[0] * grid[1]:
        raise ValueError(f'tokens must be (B, H*W, C) for grid (H, W) = {grid}, got {tuple(tokens.shape)}')
    if min(cluster_grid) < 1 or cluster_grid[0] > grid[0] or cluster_grid[1] > grid[1]:
        raise ValueError(
            f'cluster_grid (h, w) = {cluster_grid} must be >= 1 and must not exceed the token grid (H, W) = {grid}'
        )


def _checked_clustering_args(
    tokens: torch.Tensor,
    grid: Union[int, Grid],
    cluster_grid: Union[int, Grid],
    num_iters: int,
    neighbourhood_size: int,
    temperature: float,
) -> tuple[Grid, Grid]:
    """Both grids as pairs, after checking every argument of the clustering functions."""
    grid, cluster_grid = _pair(grid), _pair(cluster_grid)
    _check_clustering_args(num_iters, neighbourhood_size, temperature)
    _check_grids(tokens, grid, cluster_grid)
    return grid, cluster_grid


def _cells(size: int, num_cells: int, device: Optional[torch.device]) -> torch.Tensor:
    """(size,) the cell of each token along one axis, ``floor(i * cells / size)`` (spec §2.2). Exact integer
    arithmetic: the official nearest-resized label grid rounds in float and differs for a few sizes that no
    official config uses (e.g. 44 tokens in 26 cells)."""
    return torch.arange(size, device=device) * num_cells // size


def neighbourhood_mask(
    grid: Grid, cluster_grid: Grid, neighbourhood_size: int, device: Optional[torch.device] = None
) -> torch.Tensor:
    """(N, M) bool: token i may be assigned to centre j, i.e. both cell offsets are <= lambda // 2 (spec §2.3)."""
    radius = neighbourhood_size // 2
    rows = (_cells(grid[0], cluster_grid[0], device)[:, None] - torch.arange(cluster_grid[0], device=device)).abs()
    cols = (_cells(grid[1], cluster_grid[1], device)[:, None] - torch.arange(cluster_grid[1], device=device)).abs()
    allowed = (rows <= radius)[:, None, :, None] & (cols <= radius)[None, :, None, :]
    return rearrange(allowed, 'H W h w -> (H W) (h w)')


def _axis_candidates(
    size: int, num_cells: int, neighbourhood_size: int, device: Optional[torch.device]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Along one axis: (size, span) candidate cells of each token, a run of ``span = min(lambda, cells)`` cells
    shifted inwards at the borders (so it holds every allowed cell), and whether each is allowed."""
    span = min(neighbourhood_size, num_cells)
    cells = _cells(size, num_cells, device)
    start = (cells - neighbourhood_size // 2).clamp(0, num_cells - span)
    candidates = start[:, None] + torch.arange(span, device=device)
    return candidates, (candidates - cells[:, None]).abs() <= neighbourhood_size // 2


def neighbourhood_index(
    grid: Grid, cluster_grid: Grid, neighbourhood_size: int, device: Optional[torch.device] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The local form of :func:`neighbourhood_mask`: (N, L) index of each token's candidate centres (all in
    range) and (N, L) whether each is allowed, with L = min(lambda, h) * min(lambda, w)."""
    rows, row_ok = _axis_candidates(grid[0], cluster_grid[0], neighbourhood_size, device)
    cols, col_ok = _axis_candidates(grid[1], cluster_grid[1], neighbourhood_size, device)
    index = rows[:, None, :, None] * cluster_grid[1] + cols[None, :, None, :]
    valid = row_ok[:, None, :, None] & col_ok[None, :, None, :]
    return rearrange(index, 'H W a b -> (H W) (a b)'), rearrange(valid, 'H W a b -> (H W) (a b)')


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, N, M) ``||x_i - y_j||^2`` of (B, N, C) and (B, M, C), by the expansion ``|x|^2 + |y|^2 - 2<x, y>``
    as the official code (spec §2.4); rounding can make it slightly negative."""
    norms = (x * x).sum(-1, keepdim=True) + (y * y).sum(-1).unsqueeze(1)
    return torch.baddbmm(norms, x, y.transpose(1, 2), alpha=-2)


def initial_centres(tokens: torch.Tensor, grid: Grid, cluster_grid: Grid) -> torch.Tensor:
    """Eqn. 2: adaptive average pooling of the (B, N, C) token map to (B, h*w, C), PyTorch's overlapping bins
    ``[floor(i*H/h), ceil((i+1)*H/h))`` (spec §2.1)."""
    token_map = rearrange(tokens, 'b (H W) c -> b c H W', H=grid[0])
    return rearrange(F.adaptive_avg_pool2d(token_map, cluster_grid), 'b c h w -> b (h w) c')


def local_assignment(
    tokens: torch.Tensor, centres: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """E-step (Eqn. 3, left): (B, N, M) softmax over the allowed centres (``mask``, (N, M)) of
    ``-temperature * ||t_i - s_j||^2``; exactly 0 on the others (spec §2.5)."""
    logits = squared_distances(tokens, centres).mul_(-temperature)
    return logits.masked_fill_(~mask, float('-inf')).softmax(dim=-1)


def update_centres(tokens: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """M-step (Eqn. 3, right): each centre is the assignment-weighted mean of the (B, N, C) tokens, the mass
    clamped at 1e-16 as the official code (spec §2.5; the paper's Eqn. 3 omits the division)."""
    mass = assignment.sum(dim=1).clamp_min(1e-16)
    return torch.bmm(assignment.transpose(1, 2), tokens) / mass.unsqueeze(-1)


def cluster_tokens(
    tokens: torch.Tensor,
    grid: Grid,
    cluster_grid: Grid,
    num_iters: int = 5,
    neighbourhood_size: int = 5,
    temperature: float = 0.02,
) -> torch.Tensor:
    """Eqns. 2-3, dense masked form (the default, used by :class:`TokenClustering`): (B, H*W, C) tokens to
    (B, h*w, C) centres after ``num_iters`` EM updates. Runs in the dtype given; call it on fp32 tokens
    outside autocast, as :class:`TokenClustering` does. The affinities are detached, as in the official code.
    """
    grid, cluster_grid = _checked_clustering_args(
        tokens, grid, cluster_grid, num_iters, neighbourhood_size, temperature
    )
    mask = neighbourhood_mask(grid, cluster_grid, neighbourhood_size, tokens.device)
    centres = initial_centres(tokens, grid, cluster_grid)
    for _ in range(num_iters):
        centres = update_centres(tokens, local_assignment(tokens, centres, mask, temperature).detach())
    return centres


def cluster_tokens_local(
    tokens: torch.Tensor,
    grid: Grid,
    cluster_grid: Grid,
    num_iters: int = 5,
    neighbourhood_size: int = 5,
    temperature: float = 0.02,
) -> torch.Tensor:
    """Eqns. 2-3 in local form: the same result as :func:`cluster_tokens`, but each token gathers only its
    candidate centres (:func:`neighbourhood_index`) and the M-step scatter-adds. Slower on CPU at every size
    measured (module docstring); kept as the cross-check of the dense form."""
    grid, cluster_grid = _checked_clustering_args(
        tokens, grid, cluster_grid, num_iters, neighbourhood_size, temperature
    )
    index, valid = neighbourhood_index(grid, cluster_grid, neighbourhood_size, tokens.device)
    batch, num_tokens, channels = tokens.shape
    num_centres = cluster_grid[0] * cluster_grid[1]
    flat = index.flatten()
    token_norms = (tokens * tokens).sum(-1, keepdim=True)
    centres = initial_centres(tokens, grid, cluster_grid)
    for _ in range(num_iters):
        near = centres.index_select(1, flat).view(batch, num_tokens, -1, channels)  # (B, N, L, C)
        centre_norms = (centres * centres).sum(-1)[:, index]
        dist = token_norms + centre_norms - 2 * torch.einsum('bnc,bnlc->bnl', tokens, near)
        weights = dist.mul_(-temperature).masked_fill_(~valid, float('-inf')).softmax(dim=-1).detach()
        weighted = (weights.unsqueeze(-1) * tokens.unsqueeze(2)).flatten(1, 2)  # (B, N*L, C)
        total = tokens.new_zeros(batch, num_centres, channels).index_add_(1, flat, weighted)
        mass = tokens.new_zeros(batch, num_centres).index_add_(1, flat, weights.flatten(1))
        centres = total / mass.clamp_min(1e-16).unsqueeze(-1)
    return centres


def reconstruction_weights(
    tokens: torch.Tensor, centres: torch.Tensor, num_neighbours: int = 20, temperature: float = 0.02
) -> torch.Tensor:
    """Eqn. 4 weights with the official normalisation (spec §3): (B, N, M) from the layer-alpha tokens F
    (B, N, C) and the pre-refinement centres S (B, M, C). Per row: the ``num_neighbours`` (k) nearest centres
    among all M (ties with the k-th kept), weights ``exp(-temperature * (d - d_min))``, L2-normalised: the
    official rows of ``exp(-temperature * d)`` wherever those are unit rows, their direction where underflow
    or ``F.normalize``'s eps shrinks or zeroes them (module docstring); every row has unit norm. Runs in the
    dtype given (fp32 outside autocast in :class:`TokenReconstruction`).
    """
    _check_reconstruction_args(num_neighbours, temperature)
    dist = squared_distances(tokens, centres).clamp_min_(0)
    nearest = dist.topk(min(num_neighbours, dist.shape[-1]), dim=-1, largest=False).values  # ascending
    weights = torch.exp((dist - nearest[..., :1]).mul_(-temperature))
    return F.normalize(weights.masked_fill(dist > nearest[..., -1:], 0), p=2, dim=-1)


class TokenClusters(NamedTuple):
    """The output of :class:`TokenClustering`, everything :class:`TokenReconstruction` needs.

    Attributes:
        centres: (B, h*w, C) the centres S after kappa EM updates, in the tokens' dtype: the tokens the later
            layers run on, and (before those layers) the anchors of the reconstruction weights.
        tokens: (B, H*W, C) the layer-alpha tokens F, as given.
        grid: (H, W) of the tokens.
        cluster_grid: (h, w) of the centres.
    """

    centres: torch.Tensor
    tokens: torch.Tensor
    grid: Grid
    cluster_grid: Grid

    @property
    def identity(self) -> bool:
        """Whether clustering was skipped (``cluster_grid == grid``): the centres are the tokens themselves,
        and reconstruction returns the refined tokens unchanged."""
        return self.cluster_grid == self.grid


class TokenClustering(nn.Module):
    """Token clustering layer (Eqns. 2-3, spec §2): (B, H*W, C) tokens on an (H, W) grid to (B, h*w, C)
    centres, with the dense masked :func:`cluster_tokens` in fp32 outside autocast. Parameter-free.

    Args:
        num_iters: kappa, the number of EM updates (0: adaptive average pooling only).
        neighbourhood_size: lambda, odd: a token competes for the lambda x lambda centres around its cell.
        temperature: tau, multiplies the squared distance in the E-step logits (Segmenter: 0.02).
    """

    def __init__(self, num_iters: int = 5, neighbourhood_size: int = 5, temperature: float = 0.02) -> None:
        super().__init__()
        _check_clustering_args(num_iters, neighbourhood_size, temperature)
        self.num_iters = num_iters
        self.neighbourhood_size = neighbourhood_size
        self.temperature = temperature

    def forward(self, tokens: torch.Tensor, grid: Grid, cluster_grid: Union[int, Grid]) -> TokenClusters:
        """Cluster (B, H*W, C) ``tokens`` on ``grid`` (H, W) into ``cluster_grid`` (h, w) centres; with
        ``cluster_grid == grid`` the centres are ``tokens`` itself (module docstring, "Identity")."""
        grid, cluster_grid = _pair(grid), _pair(cluster_grid)
        _check_grids(tokens, grid, cluster_grid)
        if cluster_grid == grid:
            return TokenClusters(tokens, tokens, grid, cluster_grid)
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            centres = cluster_tokens(
                tokens.float(), grid, cluster_grid, self.num_iters, self.neighbourhood_size, self.temperature
            )
        return TokenClusters(centres.to(tokens.dtype), tokens, grid, cluster_grid)

    def extra_repr(self) -> str:
        return (
            f'num_iters={self.num_iters}, neighbourhood_size={self.neighbourhood_size}, temperature={self.temperature}'
        )


class TokenReconstruction(nn.Module):
    """Token reconstruction layer (Eqn. 4, spec §3): (B, h*w, C') refined centres back to (B, H*W, C') tokens
    with :func:`reconstruction_weights` of the :class:`TokenClusters` they came from, in fp32 outside
    autocast; the identity when clustering was skipped. Parameter-free.

    Args:
        num_neighbours: k, the number of nearest centres each token mixes (Segmenter: 20).
        temperature: tau_r, multiplies the squared distance in the weights (Segmenter: 0.02).
    """

    def __init__(self, num_neighbours: int = 20, temperature: float = 0.02) -> None:
        super().__init__()
        _check_reconstruction_args(num_neighbours, temperature)
        self.num_neighbours = num_neighbours
        self.temperature = temperature

    def forward(self, refined: torch.Tensor, clusters: TokenClusters) -> torch.Tensor:
        """Rebuild the (B, H*W, C') tokens from (B, h*w, C') ``refined`` centres, in ``refined``'s dtype."""
        if refined.dim() != 3 or refined.shape[:2] != clusters.centres.shape[:2]:
            raise ValueError(
                f'refined must be (B, h*w, C) with (B, h*w) = {tuple(clusters.centres.shape[:2])}, '
                f'got {tuple(refined.shape)}'
            )
        if clusters.identity:
            return refined
        with torch.autocast(device_type=refined.device.type, enabled=False):
            weights = reconstruction_weights(
                clusters.tokens.float(), clusters.centres.float(), self.num_neighbours, self.temperature
            )
            tokens = torch.bmm(weights, refined.float())
        return tokens.to(refined.dtype)

    def extra_repr(self) -> str:
        return f'num_neighbours={self.num_neighbours}, temperature={self.temperature}'


class FullResolutionSwitch:
    """Mixin of the hourglass backbones (plain ViT and Swin): :meth:`full_resolution`, a context in which the
    forward clusters nothing and is exactly the upstream backbone's, e.g. to compare features with the
    original model's on the same weights (``tools/analysis_tools/feature_similarity.py``). The forward reads
    :attr:`_full_resolution`."""

    _full_resolution: bool = False

    @contextmanager
    def full_resolution(self) -> Iterator['FullResolutionSwitch']:
        previous, self._full_resolution = self._full_resolution, True
        try:
            yield self
        finally:
            self._full_resolution = previous
