"""Constrained decoding over the whole code space: any level-``l`` code at step ``l``.

:class:`~recbole_letter.generation.prefix_index.PrefixIndex` restricts a beam to the tuples of
*existing* items: right for recommendation, useless for tokenizing an item that has no tuple yet.
:class:`CodeSpaceIndex` is the "per-level" variant with the same small interface
(``n_levels``, ``level_sizes``, ``width``, ``candidates``, ``follow``), so the same
:func:`~recbole_letter.generation.beam_search.constrained_beam_search` and the same model
steppers generate a *new* code tuple: at step ``l`` every code of level ``l`` is allowed, and
nothing else (no text token, no code of another level). No ID table is needed.

Prefixes are numbered in mixed radix (``prefix * size_l + code``), so the "item" the search
returns at the last level is the tuple's flat number; :meth:`CodeSpaceIndex.decode` turns it
back into codes. Optionally ``taken`` tuples (those of existing items) are masked, so the best
beam is always a *free* tuple: a new item never collides with an existing one and existing items
keep their codes. A shorter prefix all of whose completions are taken is masked as well, so a
narrow beam never walks into a dead end (this matters for small codebooks only).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

_MAX_FLAT = 2**62  # flat tuple numbers must fit int64 with room for the arithmetic


class CodeSpaceIndex(nn.Module):
    """Every tuple of ``level_sizes`` is allowed, except the ``taken`` ones (see module doc)."""

    def __init__(self, level_sizes: Sequence[int], taken: np.ndarray | torch.Tensor | None = None) -> None:
        """
        Args:
            level_sizes: codes per level (the generator's code vocabulary per level).
            taken: optional int ``[n, L]`` tuples that must not be generated (rows with negative
                codes, e.g. the padding row, are ignored).
        """
        super().__init__()
        self.level_sizes: list[int] = [int(s) for s in level_sizes]
        if not self.level_sizes or any(s < 1 for s in self.level_sizes):
            raise ValueError(f"level_sizes must be a non-empty list of positive ints, got {list(level_sizes)}")
        if float(np.prod([float(s) for s in self.level_sizes])) >= _MAX_FLAT:
            raise ValueError(f"code space {self.level_sizes} is too large to number tuples in int64")
        self.n_levels: int = len(self.level_sizes)
        flat = self.flatten(taken) if taken is not None else torch.zeros(0, dtype=torch.long)
        self.register_buffer("taken", flat, persistent=False)
        # blocked_l: prefixes of length l + 1 (flat numbers) whose every completion is taken.
        completions = 1
        for level in reversed(range(self.n_levels)):
            prefixes, counts = torch.unique(torch.div(flat, completions, rounding_mode="floor"), return_counts=True)
            self.register_buffer(f"blocked_{level}", prefixes[counts == completions], persistent=False)
            completions *= self.level_sizes[level]

    def flatten(self, codes: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Sorted distinct flat numbers of the valid rows of ``codes`` ``[n, L]`` (negative rows dropped)."""
        codes = torch.as_tensor(np.array(codes.cpu() if isinstance(codes, torch.Tensor) else codes), dtype=torch.long)
        if codes.dim() != 2 or codes.shape[1] != self.n_levels:
            raise ValueError(f"code tuples must be [n, {self.n_levels}], got {tuple(codes.shape)}")
        codes = codes[(codes >= 0).all(dim=1)]
        too_big = codes >= torch.as_tensor(self.level_sizes)
        if too_big.any():
            level = int(too_big.any(dim=0).nonzero()[0])
            raise ValueError(f"a tuple has a level-{level} code outside [0, {self.level_sizes[level]})")
        flat = torch.zeros(codes.shape[0], dtype=torch.long)
        for level, size in enumerate(self.level_sizes):
            flat = flat * size + codes[:, level]
        return torch.unique(flat)  # sorted

    def decode(self, flat: torch.Tensor) -> torch.Tensor:
        """Flat numbers ``[...]`` -> code tuples ``[..., L]`` (``-1`` entries -> all ``-1``)."""
        codes = []
        rest = flat.clamp_min(0)
        for size in reversed(self.level_sizes):
            codes.append(rest % size)
            rest = torch.div(rest, size, rounding_mode="floor")
        out = torch.stack(codes[::-1], dim=-1)
        return out.masked_fill((flat < 0).unsqueeze(-1), -1)

    def width(self, level: int) -> int:
        """Candidate slots per beam: all codes of the level."""
        return self.level_sizes[level]

    def candidates(self, level: int, prefix: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """All codes of ``level`` keep their log-prob, except those leading only to taken tuples (``-inf``)."""
        blocked = getattr(self, f"blocked_{level}")
        if blocked.numel() == 0:
            return log_probs.clone()
        size = self.level_sizes[level]
        flat = prefix.unsqueeze(-1) * size + torch.arange(size, device=prefix.device)
        return log_probs.masked_fill(torch.isin(flat, blocked), float("-inf"))

    def follow(self, level: int, prefix: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The slot is the code; the child is the longer prefix's (at the end: the tuple's) flat number."""
        return slot, prefix * self.level_sizes[level] + slot

    def extra_repr(self) -> str:
        return f"level_sizes={self.level_sizes}, taken={self.taken.numel()}"
