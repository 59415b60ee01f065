"""Batched beam search constrained to the semantic IDs of real items.

Every user's beams advance together as one ``[batch, beam]`` grid: per level, the
:class:`PrefixIndex` scores the allowed candidates of all beams at once (a masked row gather in
its dense layout, a gather of each prefix's child codes in its sparse one), one ``topk`` over
``beam * width`` candidates per user picks the survivors, and one gather maps (prefix, slot) to
the code and the next prefix id (or, at the last level, the item id). The model side is hidden
behind :class:`BeamStepper`, so the same search serves any decoder that can score the next token
of a batch of beams (TIGER's encoder-decoder, a causal LLM).

Scores are sums of the model's log-probabilities over the full vocabulary (no renormalisation
over the allowed codes), i.e. exactly the teacher-forced sequence log-probability of the item.
Because the search keeps *all* surviving prefixes when there are fewer than ``beam_size`` of them,
a beam at least as large as the number of prefixes at every level is an exhaustive search.
"""
from __future__ import annotations

from typing import Protocol

import torch

from recbole_letter.generation.prefix_index import PrefixIndex


class BeamStepper(Protocol):
    """Model-side state of a batched decode (e.g. encoder output and decoder KV cache)."""

    def start(self) -> torch.Tensor:
        """Log-probabilities ``[batch, 1, vocab]`` of the first code, given only the context."""
        ...

    def advance(self, parent: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Reorder the state to the surviving beams and feed each beam's newest token.

        Args:
            parent: ``[batch, beam]`` index of the previous beam each new beam extends.
            tokens: ``[batch, beam]`` vocabulary ids of the code just chosen.

        Returns:
            Log-probabilities ``[batch, beam, vocab]`` of the next code.
        """
        ...


@torch.no_grad()
def constrained_beam_search(
    stepper: BeamStepper,
    index: PrefixIndex,
    token_offsets: list[int],
    beam_size: int,
    renormalize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Find the ``beam_size`` most probable real items per context.

    Args:
        stepper: the model state for a batch of ``B`` contexts.
        index: valid-prefix tables of the semantic-ID table.
        token_offsets: vocabulary id of code 0 of each level (code ``c`` of level ``l`` is token
            ``token_offsets[l] + c``).
        beam_size: beams kept per context.
        renormalize: score each code by its log-probability renormalised over the codes the
            beam's prefix allows (the model was trained that way, see
            :func:`~recbole_letter.generation.losses.trie_log_probs`), instead of its
            log-probability over the whole vocabulary (HF ``generate`` with a prefix
            constraint, as in the TIGER / LETTER code).

    Returns:
        ``(items, scores)``, both ``[B, beam_size]``, sorted by descending score. ``scores`` are
        sequence log-probabilities; an entry of ``-inf`` (item ``-1``) marks a beam that found no
        item, which only happens when fewer than ``beam_size`` items can be reached.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if len(token_offsets) != index.n_levels:
        raise ValueError(
            f"got {len(token_offsets)} token offsets for {index.n_levels} code levels; pass one per level"
        )
    log_probs = stepper.start()
    batch = log_probs.shape[0]
    device = log_probs.device
    scores = torch.zeros(batch, 1, device=device, dtype=log_probs.dtype)
    prefix = torch.zeros(batch, 1, dtype=torch.long, device=device)
    found = prefix
    for level in range(index.n_levels):
        offset = token_offsets[level]
        level_log_probs = log_probs[..., offset : offset + index.level_sizes[level]]
        cand = index.candidates(level, prefix, level_log_probs)  # [B, beams, width]
        if renormalize:
            norm = torch.logsumexp(cand, dim=-1, keepdim=True)
            cand = torch.where(torch.isfinite(norm), cand - norm, cand)  # dead beams stay -inf
        width = cand.shape[-1]
        cand = (scores.unsqueeze(-1) + cand).flatten(1)
        k = min(beam_size, cand.shape[1])
        scores, flat = cand.topk(k, dim=1)
        parent = torch.div(flat, width, rounding_mode="floor")
        code, found = index.follow(level, prefix.gather(1, parent), flat - parent * width)
        # Beams that picked a disallowed slot carry -inf; park them on prefix 0 so later gathers
        # stay in range (their score stays -inf whatever they add).
        prefix = found.clamp_min(0)
        if level + 1 < index.n_levels:
            log_probs = stepper.advance(parent, code + offset)
    items = found.masked_fill(~torch.isfinite(scores), -1)
    if k < beam_size:  # tiny catalogues: same width whatever the layout or the number of codes
        items = torch.nn.functional.pad(items, (0, beam_size - k), value=-1)
        scores = torch.nn.functional.pad(scores, (0, beam_size - k), value=float("-inf"))
    return items, scores


def scatter_scores(
    items: torch.Tensor, scores: torch.Tensor, n_items: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Dense ``[B, n_items]`` scores: beam log-probs for found items, ``-inf`` everywhere else.

    RecBole's full-sort evaluator needs this matrix per evaluation batch; pass ``out`` (e.g. a
    row slice of the batch's matrix) to fill it in place instead of allocating a chunk and
    concatenating, which would hold the matrix twice. Dead beams (item ``-1``) are written to
    column 0, the padding item, as ``-inf``.
    """
    shape = (items.shape[0], n_items)
    if out is None:
        out = torch.empty(shape, device=scores.device, dtype=scores.dtype)
    elif tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape} (one row per user)")
    out.fill_(float("-inf"))
    alive = items >= 0
    out.scatter_(1, items.clamp_min(0), scores.masked_fill(~alive, float("-inf")).to(out.dtype))
    return out
