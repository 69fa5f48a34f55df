"""Soft cluster assignment shared by the clustering attention layers and heads."""
import torch


def soft_assignment(logits: torch.Tensor) -> torch.Tensor:
    """Softmax of assignment logits (B, M, N) over the N tokens (last axis), in fp32 also under autocast.

    Each cluster becomes a convex combination of tokens (PaCa-ViT Eqns. 5, 6, 9). With N in the tens of
    thousands the weights are tiny, and an fp16 softmax of fp16 logits would lose them.
    """
    return logits.float().softmax(dim=-1)
