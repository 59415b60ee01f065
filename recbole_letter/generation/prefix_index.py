"""Valid-prefix tensors for constrained decoding over a semantic-ID table, in two layouts.

Constrained beam search must only extend code prefixes that belong to a real item. A Python
trie walked per beam per step costs ``O(batch * beam * levels)`` interpreter calls; instead every
distinct prefix gets an id once, and per level a tensor answers, for a whole ``[batch, beam]``
grid in one gather, "which codes may follow each beam's prefix, and which prefix (or item) does
each lead to". Two layouts store that answer:

* **dense**: per level a ``[n_prefixes, codes]`` table of child ids plus an additive ``0 / -inf``
  mask. A step is one row gather and an addition. Memory is ``12 * sum_l n_prefixes_l * codes_l``
  bytes, which grows with items x codes: ~5 MB for 1.7k items at 4 x 256 codes, but ~3 GB for
  1M items (almost every 3-code prefix is distinct, each row holds 256 entries).
* **sparse** (CSR): per level the children of each prefix are one contiguous, code-sorted run of
  an edge array (``row_ptr``, ``codes``). There is one edge per distinct prefix of the next
  length, so memory is ``8 * (sum_l n_prefixes_l + edges)`` bytes, i.e. ``O(items * levels)``:
  ~30 MB for 1M items. A step gathers ``max_degree_l`` candidate codes per beam (the largest
  number of children any prefix of that level has, at most ``codes_l``) and then the model's
  log-probabilities of those codes.

Both layouts number prefixes identically (lexicographic order of the code tuples) and list a
prefix's allowed codes in ascending order, so a beam search returns the same items and bitwise
the same scores with either; :class:`PrefixIndex` picks one and exposes the small interface the
search needs (:meth:`PrefixIndex.width`, :meth:`PrefixIndex.candidates`,
:meth:`PrefixIndex.follow`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

LAYOUTS = ("auto", "dense", "sparse")

# ``auto`` picks the dense layout only while its tables stay below this size (a few MB is
# harmless; the hundreds of MB to GB of large catalogues are not) ...
AUTO_DENSE_MAX_BYTES = 64 * 2**20
# ... and only where it does less work per step. A dense slot is one addition; a sparse slot is
# two gathers and a mask, measured ~2x the cost of a dense slot (index-only rows of
# benchmarks/scale.py). So dense wins on nearly full tries (every prefix has almost all codes as
# children) and sparse wins on the usual semantic-ID tables, where deep prefixes have few children.
SPARSE_SLOT_COST = 2.0


class _DenseLevels(nn.Module):
    """Per level: child ids ``[n_prefixes, codes]`` (``-1`` = invalid) and an additive mask."""

    def __init__(self, level_sizes: list[int], n_prefixes: list[int], edges: list[tuple]) -> None:
        super().__init__()
        for level, (size, n_parent, (parent, code, child)) in enumerate(zip(level_sizes, n_prefixes, edges)):
            table = torch.full((n_parent, size), -1, dtype=torch.long)
            table[parent, code] = child
            mask = torch.zeros(n_parent, size)
            mask.masked_fill_(table < 0, float("-inf"))
            # Non-persistent: derived from the ID table, so checkpoints need not carry them.
            self.register_buffer(f"child_{level}", table, persistent=False)
            self.register_buffer(f"mask_{level}", mask, persistent=False)
        self.level_sizes = level_sizes

    def width(self, level: int) -> int:
        return self.level_sizes[level]

    def candidates(self, level: int, prefix: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        return log_probs + getattr(self, f"mask_{level}")[prefix]

    def follow(self, level: int, prefix: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return slot, getattr(self, f"child_{level}")[prefix, slot]


class _SparseLevels(nn.Module):
    """Per level: CSR ``row_ptr [n_prefixes + 1]`` into code-sorted ``codes [edges]``.

    The child prefix of edge ``e`` is ``e`` itself (edges are the next level's prefixes, numbered
    in the same lexicographic order), so only the last level stores an edge -> item id array.
    """

    def __init__(self, n_prefixes: list[int], edges: list[tuple]) -> None:
        super().__init__()
        self.max_degree: list[int] = []
        self.n_edges: list[int] = []
        last = len(edges) - 1
        for level, (n_parent, (parent, code, child)) in enumerate(zip(n_prefixes, edges)):
            degree = torch.bincount(parent, minlength=n_parent)
            row_ptr = torch.zeros(n_parent + 1, dtype=torch.long)
            torch.cumsum(degree, 0, out=row_ptr[1:])
            self.register_buffer(f"row_ptr_{level}", row_ptr, persistent=False)
            self.register_buffer(f"codes_{level}", code.clone(), persistent=False)
            self.max_degree.append(int(degree.max()))
            self.n_edges.append(int(code.numel()))
            if level == last:
                self.register_buffer("items", child.clone(), persistent=False)

    def width(self, level: int) -> int:
        return self.max_degree[level]

    def _edges(self, level: int, prefix: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge position of ``slot`` in each prefix's run (clamped in range) and its validity.

        ``slot`` has ``prefix``'s shape, or one more trailing dimension (all slots of each beam).
        """
        row_ptr = getattr(self, f"row_ptr_{level}")
        start = row_ptr[prefix]
        degree = row_ptr[prefix + 1] - start
        if slot.dim() > prefix.dim():
            start, degree = start.unsqueeze(-1), degree.unsqueeze(-1)
        edge = (start + slot).clamp_max(self.n_edges[level] - 1)
        return edge, slot < degree

    def candidates(self, level: int, prefix: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        slots = torch.arange(self.max_degree[level], device=prefix.device).expand(*prefix.shape, -1)
        edge, valid = self._edges(level, prefix, slots)
        code = getattr(self, f"codes_{level}")[edge]
        return log_probs.gather(-1, code).masked_fill_(~valid, float("-inf"))

    def follow(self, level: int, prefix: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        edge, valid = self._edges(level, prefix, slot)
        code = getattr(self, f"codes_{level}")[edge]
        child = self.items[edge] if level == len(self.max_degree) - 1 else edge
        return code, child.masked_fill(~valid, -1)


class PrefixIndex(nn.Module):
    """Which codes may follow each prefix, built once from a semantic-ID table.

    Level ``l`` (0-based) is the step that chooses code ``l``. The beams entering it hold a prefix
    of length ``l``, identified by a prefix id in ``[0, n_prefixes[l])`` (level 0 has the single
    empty prefix, id 0). A step offers ``width(l)`` candidate *slots* per beam:
    :meth:`candidates` scores them, :meth:`follow` turns the chosen slots into codes and next
    prefix ids (item ids at the last level), ``-1`` where a slot is not a real child.
    """

    def __init__(self, table: np.ndarray | torch.Tensor, layout: str = "auto") -> None:
        """Build the index.

        Args:
            table: int ``[n_items, L]`` semantic IDs aligned with internal item ids; rows whose
                codes are all negative (row 0 = padding) are not items and are skipped.
            layout: ``dense``, ``sparse`` or ``auto`` (dense where its tables take at most
                :data:`AUTO_DENSE_MAX_BYTES` and its steps are cheaper, see :func:`_auto_layout`).
        """
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"prefix_index must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        codes = np.asarray(table.cpu() if isinstance(table, torch.Tensor) else table)
        if codes.ndim != 2 or codes.shape[1] < 1:
            raise ValueError(
                f"semantic-ID table must be 2-D [n_items, n_levels], got shape {codes.shape}; "
                "pass the table returned by semantic_ids_for"
            )
        codes = codes.astype(np.int64, copy=False)
        valid = codes >= 0
        real = valid.all(axis=1)
        partial = ~real & valid.any(axis=1)
        if partial.any():
            bad = np.flatnonzero(partial)[:5].tolist()
            raise ValueError(
                f"semantic-ID rows {bad} mix negative and valid codes; every item needs a full code tuple"
            )
        item_ids = np.flatnonzero(real)
        if item_ids.size == 0:
            raise ValueError("semantic-ID table has no item rows; build it from a non-empty dataset")

        self.n_items_total: int = int(codes.shape[0])
        codes = codes[item_ids]
        self.n_levels: int = int(codes.shape[1])
        self.level_sizes: list[int] = [int(s) + 1 for s in codes.max(axis=0)]
        self.n_prefixes, edges = _number_prefixes(codes, item_ids)
        if layout == "auto":
            layout = _auto_layout(self.level_sizes, self.n_prefixes, [_max_degree(e[0]) for e in edges])
        self.layout: str = layout
        if layout == "dense":
            self.levels: nn.Module = _DenseLevels(self.level_sizes, self.n_prefixes, edges)
        else:
            self.levels = _SparseLevels(self.n_prefixes, edges)

    def width(self, level: int) -> int:
        """Candidate slots per beam at ``level`` (dense: the level's codes; sparse: max children)."""
        return self.levels.width(level)

    def candidates(self, level: int, prefix: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """Scores ``[..., width(level)]`` of each beam's slots: the code's log-prob, ``-inf`` if not allowed.

        Args:
            prefix: ``[...]`` prefix ids of length ``level``.
            log_probs: ``[..., level_sizes[level]]`` log-probabilities of this level's codes.
        """
        return self.levels.candidates(level, prefix, log_probs)

    def follow(self, level: int, prefix: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(code, child)`` of the chosen ``slot`` of each ``prefix`` (same shapes).

        ``child`` is the prefix id of length ``level + 1`` (the item id at the last level), ``-1``
        where the slot is not a real child; ``code`` is then an arbitrary valid code.
        """
        return self.levels.follow(level, prefix, slot)

    def nbytes(self) -> int:
        """Bytes held by the index tensors (what grows with the catalogue)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return (
            f"layout={self.layout}, level_sizes={self.level_sizes}, n_prefixes={self.n_prefixes}, "
            f"{self.nbytes() / 2**20:.1f} MB"
        )


def _max_degree(parent: torch.Tensor) -> int:
    """Most children of any prefix, from an edge list's (sorted) parent ids."""
    return int(torch.unique_consecutive(parent, return_counts=True)[1].max())


def _auto_layout(level_sizes: list[int], n_prefixes: list[int], max_degree: list[int]) -> str:
    """``dense`` when its tables are small and it scores fewer slot-costs per beam, else ``sparse``.

    Per beam, a dense step scores ``level_sizes[l]`` slots and a sparse one ``max_degree[l]``
    slots at :data:`SPARSE_SLOT_COST` each. Level 0 is left out of the comparison when there are
    deeper levels: it runs once per user with a single beam, the others with the whole beam.
    """
    dense_bytes = sum(12 * n * size for n, size in zip(n_prefixes, level_sizes))
    if dense_bytes > AUTO_DENSE_MAX_BYTES:
        return "sparse"
    levels = slice(1, None) if len(level_sizes) > 1 else slice(None)
    dense_work = sum(level_sizes[levels])
    sparse_work = SPARSE_SLOT_COST * sum(max_degree[levels])
    return "dense" if dense_work <= sparse_work else "sparse"


def _number_prefixes(codes: np.ndarray, item_ids: np.ndarray) -> tuple[list[int], list[tuple]]:
    """Number every distinct prefix in lexicographic order and list each level's edges.

    Sorting the tuples once puts every prefix's children next to each other, in code order; a
    prefix of length ``l + 1`` starts wherever a row differs from the previous one within its
    first ``l + 1`` codes. Returns ``n_prefixes`` (per level, the prefixes of length ``l``) and
    per level ``(parent, code, child)`` int64 tensors, one entry per edge, sorted by parent then
    code; ``child`` is the edge's own index (= the next level's prefix id), or the item id at the
    last level. Raises on duplicate tuples.
    """
    n_items, n_levels = codes.shape
    order = np.lexsort(codes.T[::-1])
    codes = codes[order]
    # new_prefix[i, l]: row i starts a new prefix of length l + 1.
    new_prefix = np.ones((n_items, n_levels), dtype=bool)
    np.logical_or.accumulate(codes[1:] != codes[:-1], axis=1, out=new_prefix[1:])
    if not new_prefix[:, -1].all():
        raise ValueError(
            "semantic-ID table has duplicate code tuples; resolve collisions (e.g. an extra level) "
            "before decoding, otherwise items sharing a tuple cannot be told apart"
        )
    n_prefixes: list[int] = []
    edges: list[tuple] = []
    parent_of_row = np.zeros(n_items, dtype=np.int64)  # prefix id of length l of each sorted row
    n_parent = 1
    for level in range(n_levels):
        starts = np.flatnonzero(new_prefix[:, level])
        if level + 1 < n_levels:
            child = np.arange(starts.size, dtype=np.int64)
        else:
            child = item_ids[order].astype(np.int64)
        edges.append(
            (
                torch.from_numpy(parent_of_row[starts]),
                torch.from_numpy(np.ascontiguousarray(codes[starts, level])),
                torch.from_numpy(child),
            )
        )
        n_prefixes.append(n_parent)
        parent_of_row = np.cumsum(new_prefix[:, level], dtype=np.int64) - 1
        n_parent = starts.size
    return n_prefixes, edges
