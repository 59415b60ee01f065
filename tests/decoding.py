"""Decoder test helpers: random unique ID tables and a model-free
:class:`~recbole_letter.generation.beam_search.BeamStepper`.

The next-token log-probabilities are fixed random tables indexed by the *whole* prefix
(``logits = bias[context] + sum_j step[j][prefix_j]``), so a beam search that reorders its beams
wrongly scores other sequences than the oracle does, and the oracle is exact arithmetic instead of
a network: these tests check the search, not any model.
"""
from __future__ import annotations

import numpy as np
import torch


def unique_table(n_items: int, n_levels: int, n_codes: int, seed: int) -> np.ndarray:
    """Random distinct code tuples for items 1..n_items, row 0 = padding (-1)."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(n_codes**n_levels, size=n_items, replace=False)
    codes = np.stack([(flat // n_codes**p) % n_codes for p in reversed(range(n_levels))], axis=1)
    return np.concatenate([np.full((1, n_levels), -1), codes]).astype(np.int64)


class TableStepper:
    """Log-probs from fixed tables: ``log_softmax(bias[b] + sum_j step[j, prefix_j])``."""

    def __init__(self, n_contexts: int, vocab: int, depth: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.bias = 3 * torch.randn(n_contexts, vocab, generator=g, dtype=torch.float64)
        self.step = 3 * torch.randn(depth, vocab, vocab, generator=g, dtype=torch.float64)
        self.prefix = torch.zeros(n_contexts, 1, 0, dtype=torch.long)

    def for_contexts(self, contexts: torch.Tensor) -> "TableStepper":
        """A fresh decode for a batch whose row ``b`` is context ``contexts[b]`` (same tables)."""
        stepper = object.__new__(TableStepper)
        stepper.bias, stepper.step = self.bias[contexts], self.step
        stepper.prefix = torch.zeros(len(contexts), 1, 0, dtype=torch.long)
        return stepper

    def _log_probs(self, prefix: torch.Tensor) -> torch.Tensor:
        logits = self.bias[:, None, :].expand(-1, prefix.shape[1], -1).clone()
        for j in range(prefix.shape[-1]):
            logits += self.step[j][prefix[..., j]]
        return torch.log_softmax(logits, dim=-1)

    def start(self) -> torch.Tensor:
        return self._log_probs(self.prefix)

    def advance(self, parent: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(parent.shape[0])[:, None]
        self.prefix = torch.cat([self.prefix[rows, parent], tokens[..., None]], dim=-1)
        return self._log_probs(self.prefix)

    def sequence_log_probs(self, token_rows: torch.Tensor) -> torch.Tensor:
        """Oracle: log-prob ``[n_contexts, n]`` of each full token sequence in ``token_rows``:
        ``[n, L]`` (every context scores every row) or ``[n_contexts, n, L]`` (rows per context)."""
        prefix = token_rows if token_rows.dim() == 3 else token_rows[None].expand(self.bias.shape[0], -1, -1)
        n, length = prefix.shape[1:]
        total = torch.zeros(self.bias.shape[0], n, dtype=torch.float64)
        for level in range(length):
            lp = self._log_probs(prefix[..., :level])
            total += lp.gather(-1, prefix[..., level : level + 1]).squeeze(-1)
        return total
