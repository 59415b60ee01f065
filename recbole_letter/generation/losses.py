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


def trie_log_probs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    prefixes: torch.Tensor,
    index,
    token_offsets: list[int],
) -> torch.Tensor:
    """Log-probability ``[B, L]`` of each target code, normalised over the *valid* next codes.

    At level ``l`` the softmax spans only the codes that continue the target's first ``l`` codes
    into some real item (``index.candidates``: the beam search's constraint), instead of the
    whole vocabulary. Summed over levels this is the log-probability of the item under a proper
    distribution over the catalogue (a softmax over a tree of items), so no probability goes to
    code tuples that are not items and no capacity goes to learning which tuples exist: with
    4 x 256 codes for 1.7k items the last two codes are fixed by the first two for almost every
    item, and a vocabulary-wide softmax must memorise that table before its scores stop adding
    noise to the ranking (``benchmarks/quality.py``).

    Args:
        logits: ``[B, L, vocab]`` teacher-forced scores (already divided by any temperature).
        targets: ``[B, L]`` vocabulary ids of the target codes.
        prefixes: ``[B, L]`` prefix id of each target's first ``l`` codes
            (``PrefixIndex.item_prefixes[items]``).
        index: the :class:`~recbole_letter.generation.prefix_index.PrefixIndex` of the ID table.
        token_offsets: vocabulary id of code 0 of each level.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2] or prefixes.shape != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and prefixes "
            f"{tuple(prefixes.shape)} must be [B, L, vocab], [B, L], [B, L]"
        )
    out = []
    for level, offset in enumerate(token_offsets):
        level_logits = logits[:, level, offset : offset + index.level_sizes[level]].float()
        allowed = index.candidates(level, prefixes[:, level], level_logits)
        target = level_logits.gather(1, (targets[:, level] - offset)[:, None]).squeeze(1)
        out.append(target - torch.logsumexp(allowed, dim=-1))
    return torch.stack(out, dim=1)


def trie_ranking_guided_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    prefixes: torch.Tensor,
    index,
    token_offsets: list[int],
    tau: float = 1.0,
) -> torch.Tensor:
    """:func:`ranking_guided_loss` with each level's softmax restricted to the valid codes
    (:func:`trie_log_probs`); ``tau`` sharpens it the same way. Mean over codes."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0 (1.0 = plain cross-entropy), got {tau}")
    return -trie_log_probs(logits.float() / tau, targets, prefixes, index, token_offsets).mean()
