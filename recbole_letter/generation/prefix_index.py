"""Valid-prefix tensors for constrained decoding over a semantic-ID table.

Constrained beam search must only extend code prefixes that belong to a real item. A Python
trie walked per beam per step costs ``O(batch * beam * levels)`` interpreter calls; instead we
number every distinct prefix once and store, per level, a dense table indexed by
``(prefix id, next code)``. One gather per decoding step then answers "which codes are allowed
after each beam's prefix, and which prefix (or item) do they lead to" for the whole batch.

Memory is ``sum_l n_prefixes_l * codes_l`` int64 entries: ~0.4M for 1.7k items with 256-code
levels, ~256M for a 1M-item catalogue (where a sparse/CSR layout would be the next step).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class PrefixIndex(nn.Module):
    """Dense per-level transition tables built once from a semantic-ID table.

    Level ``l`` (0-based) describes the step that chooses code ``l``. The beams entering it hold a
    prefix of length ``l``, identified by a prefix id in ``[0, n_prefixes[l])`` (level 0 has the
    single empty prefix, id 0).

    Buffers (non-persistent: they are derived from the table, so checkpoints need not carry them):

    * ``child_<l>``: int64 ``[n_prefixes[l], level_sizes[l]]``; the prefix id of length ``l + 1``
      reached by appending the code, or for the last level the internal item id; ``-1`` if no
      real item has that prefix.
    * ``mask_<l>``: float ``[n_prefixes[l], level_sizes[l]]``; ``0`` where allowed, ``-inf``
      elsewhere, so masking is an addition to the log-probabilities.
    """

    def __init__(self, table: np.ndarray | torch.Tensor) -> None:
        """Build the tables.

        Args:
            table: int ``[n_items, L]`` semantic IDs aligned with internal item ids; rows whose
                codes are all negative (row 0 = padding) are not items and are skipped.
        """
        super().__init__()
        codes = torch.as_tensor(np.asarray(table), dtype=torch.long).cpu()
        if codes.dim() != 2 or codes.shape[1] < 1:
            raise ValueError(
                f"semantic-ID table must be 2-D [n_items, n_levels], got shape {tuple(codes.shape)}; "
                "pass the table returned by semantic_ids_for"
            )
        real = (codes >= 0).all(dim=1)
        partial = ~real & (codes >= 0).any(dim=1)
        if partial.any():
            bad = partial.nonzero().flatten()[:5].tolist()
            raise ValueError(
                f"semantic-ID rows {bad} mix negative and valid codes; every item needs a full code tuple"
            )
        item_ids = real.nonzero().flatten()
        if item_ids.numel() == 0:
            raise ValueError("semantic-ID table has no item rows; build it from a non-empty dataset")
        codes = codes[item_ids]
        n_items, n_levels = codes.shape
        if torch.unique(codes, dim=0).shape[0] != n_items:
            raise ValueError(
                "semantic-ID table has duplicate code tuples; resolve collisions (e.g. an extra level) "
                "before decoding, otherwise items sharing a tuple cannot be told apart"
            )

        self.n_levels: int = n_levels
        self.n_items_total: int = int(np.asarray(table).shape[0])
        self.level_sizes: list[int] = [int(codes[:, l].max()) + 1 for l in range(n_levels)]
        self.n_prefixes: list[int] = []

        # Prefix ids of length l: inverse of unique over the first l columns (length 0 -> all 0).
        parent = torch.zeros(n_items, dtype=torch.long)
        n_parent = 1
        for level in range(n_levels):
            if level + 1 < n_levels:
                _, child_ids = torch.unique(codes[:, : level + 1], dim=0, return_inverse=True)
                n_child = int(child_ids.max()) + 1
            else:
                child_ids, n_child = item_ids, self.n_items_total
            size = self.level_sizes[level]
            child = torch.full((n_parent, size), -1, dtype=torch.long)
            child[parent, codes[:, level]] = child_ids
            mask = torch.zeros(n_parent, size)
            mask.masked_fill_(child < 0, float("-inf"))
            self.register_buffer(f"child_{level}", child, persistent=False)
            self.register_buffer(f"mask_{level}", mask, persistent=False)
            self.n_prefixes.append(n_parent)
            parent, n_parent = child_ids, n_child

    def child(self, level: int) -> torch.Tensor:
        """``[n_prefixes[level], level_sizes[level]]`` next prefix id / item id, ``-1`` if invalid."""
        return getattr(self, f"child_{level}")

    def mask(self, level: int) -> torch.Tensor:
        """``[n_prefixes[level], level_sizes[level]]`` additive mask: 0 allowed, ``-inf`` not."""
        return getattr(self, f"mask_{level}")
