"""Soft cluster assignment and cluster pooling, shared by the clustering attention layers and heads."""

from typing import Callable, Optional

import torch
import torch.nn as nn

from .row_bands import batched_matmul, cpu_fp32_inference, token_chunk


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether a forward hook or pre-hook, on ``module`` or on every module (``register_module_forward_hook``), may see
    its inputs and outputs, and keep them."""
    hooks = torch.nn.modules.module
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or hooks._global_forward_hooks
        or hooks._global_forward_pre_hooks
    )


def forward_hooks_within(*modules: nn.Module) -> bool:
    """Whether a forward hook or pre-hook on any of these modules or on a module inside them
    (:func:`has_forward_hooks`) may see their tensors, and keep them."""
    return any(has_forward_hooks(m) for module in modules for m in module.modules())


def soft_assignment(logits: torch.Tensor) -> torch.Tensor:
    """Softmax of assignment logits (B, M, N) over the N tokens (last axis), in fp32 also under autocast.

    Each cluster becomes a convex combination of tokens (PaCa-ViT paper, Eqns. 5, 6 and 9). With N in the
    tens of thousands the weights are tiny, and an fp16 softmax of fp16 logits would lose them.
    """
    return logits.float().softmax(dim=-1)


class SoftAssignment(nn.Module):
    """:func:`soft_assignment` as a module (no parameters), so tools can find and watch every place where a
    model turns assignment logits into weights; its output must be fp32 under autocast (``fp32_output``).

    Args:
        overwrite_logits: the caller's logits are a temporary, used for nothing else: in fp32 CPU inference the
            weights are then written over them when they are contiguous (the same values). An out-of-place
            softmax allocates another (B, M, N) tensor, 98 MiB in PaCa-Small's stage 0 at 1600x2560: above
            glibc's mmap threshold, so with default malloc it is mapped and faulted in afresh on every pass
            (37-41 against 10-11 ms in place on 2 threads, docs/benchmarks.md). Not while a forward hook may keep
            the logits: one on this module, on every module, or, as the caller says with ``logits_watched``, on
            the module that made them (``cluster_maps`` captures the clustering layers' outputs that way).
    """

    fp32_output = True

    def __init__(self, overwrite_logits: bool = False) -> None:
        super().__init__()
        self.overwrite_logits = overwrite_logits

    def forward(self, logits: torch.Tensor, logits_watched: bool = False) -> torch.Tensor:
        """The weights of ``logits`` (B, M, N); ``logits_watched``: a forward hook may keep them."""
        overwrite = self.overwrite_logits and not logits_watched and not has_forward_hooks(self)
        if overwrite and logits.is_contiguous() and cpu_fp32_inference(logits):
            return torch.softmax(logits, dim=-1, out=logits)
        return soft_assignment(logits)

    def extra_repr(self) -> str:
        return 'overwrite_logits=True' if self.overwrite_logits else ''


def pool_clusters(
    assignment: torch.Tensor, tokens: torch.Tensor, norm: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
) -> torch.Tensor:
    """Cluster tokens ``C^T X``: (B, M, N) assignment times (B, N, C) tokens -> (B, M, C), in fp32.

    The product runs outside autocast with both operands in fp32: autocast would cast a soft assignment
    over N tokens to fp16, where most of its weights are subnormal (70% of them in stage 0 at 512x512,
    97% at 1024x1024) and the cluster tokens lose most of their mass. The result is returned in fp32 under
    autocast, where the following LayerNorm or Linear casts it as autocast's rules say, and in the tokens'
    dtype otherwise (a model converted with ``.half()``).

    With ``norm`` (a token-wise layer such as a block's LayerNorm) the pooled tokens are ``norm(tokens)``. On
    CPUs they are then normalised and pooled chunk by chunk of tokens, each chunk's normalised tokens in the
    cache, the chunks' products summed; no normalised copy of the whole map is made. The products run on
    oneDNN's matmul in fp32 CPU inference (:func:`~.row_bands.batched_matmul`).
    """
    chunk = None if norm is None else token_chunk(tokens, tokens.shape[2])
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        if chunk is None:
            pooled = batched_matmul(assignment.float(), (tokens if norm is None else norm(tokens)).float())
        else:
            pooled = None
            for start in range(0, tokens.shape[1], chunk):
                part = norm(tokens[:, start : start + chunk]).float()
                product = batched_matmul(assignment[:, :, start : start + chunk].float(), part)
                pooled = product if pooled is None else pooled.add_(product)
    return pooled if torch.is_autocast_enabled(tokens.device.type) else pooled.to(tokens.dtype)
