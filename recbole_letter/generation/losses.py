"""Ranking-guided generation loss (LETTER, arXiv 2405.07314, Sec. 3.3).

LETTER shows that the plain generation loss of generative recommenders is a softmax
cross-entropy whose temperature controls how hard negatives are weighted: dividing the logits by
``tau < 1`` sharpens the softmax, so the gradient concentrates on the codes the model currently
confuses with the target (hard negatives), which improves top-K ranking. ``tau = 1`` is the
ordinary TIGER / LC-Rec next-token cross-entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ranking_guided_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    tau: float = 1.0,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean token cross-entropy of ``logits / tau``.

    Args:
        logits: ``[..., vocab]`` unnormalised scores of each target position.
        targets: ``[...]`` vocabulary ids; positions equal to ``ignore_index`` do not count
            (prompt tokens of a causal LM, padding).
        tau: temperature, > 0. 1.0 = plain cross-entropy; LETTER's best on Instruments is 0.7.
        ignore_index: target value that is skipped.

    Returns:
        Scalar loss averaged over the counted positions. Computed in float32 so a half-precision
        forward pass does not lose the small differences a low temperature amplifies.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0 (1.0 = plain cross-entropy), got {tau}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree; "
            "logits need one extra trailing vocab dimension"
        )
    scaled = logits.float() / tau
    return F.cross_entropy(scaled.flatten(0, -2), targets.flatten(), ignore_index=ignore_index)
