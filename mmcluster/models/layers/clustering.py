"""Soft cluster assignment and cluster pooling, shared by the clustering attention layers and heads."""

import torch
import torch.nn as nn


def soft_assignment(logits: torch.Tensor) -> torch.Tensor:
    """Softmax of assignment logits (B, M, N) over the N tokens (last axis), in fp32 also under autocast.

    Each cluster becomes a convex combination of tokens (PaCa-ViT paper, Eqns. 5, 6 and 9). With N in the
    tens of thousands the weights are tiny, and an fp16 softmax of fp16 logits would lose them.
    """
    return logits.float().softmax(dim=-1)


class SoftAssignment(nn.Module):
    """:func:`soft_assignment` as a module (no parameters), so tools can find and watch every place where a
    model turns assignment logits into weights; its output must be fp32 under autocast (``fp32_output``)."""

    fp32_output = True

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return soft_assignment(logits)


def pool_clusters(assignment: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cluster tokens ``C^T X``: (B, M, N) assignment times (B, N, C) tokens -> (B, M, C), in fp32.

    The product runs outside autocast with both operands in fp32: autocast would cast a soft assignment
    over N tokens to fp16, where most of its weights are subnormal (70% of them in stage 0 at 512x512,
    97% at 1024x1024) and the cluster tokens lose most of their mass. The result is returned in fp32 under
    autocast, where the following LayerNorm or Linear casts it as autocast's rules say, and in the tokens'
    dtype otherwise (a model converted with ``.half()``).
    """
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        pooled = torch.matmul(assignment.float(), tokens.float())
    return pooled if torch.is_autocast_enabled(tokens.device.type) else pooled.to(tokens.dtype)
