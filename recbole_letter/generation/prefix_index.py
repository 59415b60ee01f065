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
the same scores with either, and each level can use its own: :class:`PrefixIndex` picks one per
level (``auto``: dense for the shallow levels where nearly every code is a child, sparse for the
deep ones) and exposes the small interface the search needs (:meth:`PrefixIndex.width`,
:meth:`PrefixIndex.candidates`, :meth:`PrefixIndex.follow`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

LAYOUTS = ("auto", "dense", "sparse")

# ``auto`` gives a level the dense layout only where that does less work per step ...
# A dense slot is one addition; a sparse slot is two gathers and a mask, measured at 1.7-3.6x
# the cost of a dense slot on full tries where both score the same slots (benchmarks/scale.py,
# last line of its table). 2, the low end, leans towards the smaller sparse layout when the two
# are close. So dense wins where a level's prefixes have almost all codes as children (the
# first level or two), sparse where they have a few.
SPARSE_SLOT_COST = 2.0
# ... and only while all dense levels together stay below this size (a few MB is harmless; the
# hundreds of MB to GB of deep levels in large catalogues are not).
AUTO_DENSE_MAX_BYTES = 64 * 2**20


class _DenseLevel(nn.Module):
    """Child ids ``[n_prefixes, codes]`` (``-1`` = invalid) and an additive ``0 / -inf`` mask."""

    layout = "dense"

    def __init__(self, size: int, n_parent: int, parent: torch.Tensor, code: torch.Tensor, child: torch.Tensor) -> None:
        super().__init__()
        table = torch.full((n_parent, size), -1, dtype=torch.long)
        table[parent, code] = child
        mask = torch.zeros(n_parent, size)
        mask.masked_fill_(table < 0, float("-inf"))
        # Non-persistent: derived from the ID table, so checkpoints need not carry them.
        self.register_buffer("child", table, persistent=False)
        self.register_buffer("mask", mask, persistent=False)
        self.width = size

    def candidates(self, prefix: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        return log_probs + self.mask[prefix]

    def follow(self, prefix: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return slot, self.child[prefix, slot]


class _SparseLevel(nn.Module):
    """CSR: ``row_ptr [n_prefixes + 1]`` into the code-sorted children ``codes [edges]``.

    The child prefix of edge ``e`` is ``e`` itself (edges are the next level's prefixes, numbered
    in the same lexicographic order), so only the last level stores an edge -> item id array.
    """

    layout = "sparse"

    def __init__(self, n_parent: int, parent: torch.Tensor, code: torch.Tensor, child: torch.Tensor, last: bool) -> None:
        super().__init__()
        degree = torch.bincount(parent, minlength=n_parent)
        row_ptr = torch.zeros(n_parent + 1, dtype=torch.long)
        torch.cumsum(degree, 0, out=row_ptr[1:])
        self.register_buffer("row_ptr", row_ptr, persistent=False)
        self.register_buffer("codes", code.clone(), persistent=False)
        self.register_buffer("items", child.clone() if last else None, persistent=False)
        self.width = int(degree.max())
        self.n_edges = int(code.numel())

    def _edges(self, prefix: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge position of ``slot`` in each prefix's run (clamped in range) and its validity.

        ``slot`` has ``prefix``'s shape, or one more trailing dimension (all slots of each beam).
        """
        start = self.row_ptr[prefix]
        degree = self.row_ptr[prefix + 1] - start
        if slot.dim() > prefix.dim():
            start, degree = start.unsqueeze(-1), degree.unsqueeze(-1)
        return (start + slot).clamp_max(self.n_edges - 1), slot < degree

    def candidates(self, prefix: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        slots = torch.arange(self.width, device=prefix.device).expand(*prefix.shape, -1)
        edge, valid = self._edges(prefix, slots)
        return log_probs.gather(-1, self.codes[edge]).masked_fill_(~valid, float("-inf"))

    def follow(self, prefix: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        edge, valid = self._edges(prefix, slot)
        child = edge if self.items is None else self.items[edge]
        return self.codes[edge], child.masked_fill(~valid, -1)


class PrefixIndex(nn.Module):
    """Which codes may follow each prefix, built once from a semantic-ID table.

    Level ``l`` (0-based) is the step that chooses code ``l``. The beams entering it hold a prefix
    of length ``l``, identified by a prefix id in ``[0, n_prefixes[l])`` (level 0 has the single
    empty prefix, id 0). A step offers ``width(l)`` candidate *slots* per beam:
    :meth:`candidates` scores them, :meth:`follow` turns the chosen slots into codes and next
    prefix ids (item ids at the last level), ``-1`` where a slot is not a real child. Each level
    has its own layout; ``layouts`` lists them.
    """

    def __init__(self, table: np.ndarray | torch.Tensor, layout: str = "auto") -> None:
        """Build the index.

        Args:
            table: int ``[n_items, L]`` semantic IDs aligned with internal item ids; rows whose
                codes are all negative (row 0 = padding) are not items and are skipped.
            layout: ``dense`` or ``sparse`` for every level, or ``auto``: per level, dense where
                it does less work and all dense levels fit in :data:`AUTO_DENSE_MAX_BYTES`
                (see :func:`_auto_layouts`), sparse elsewhere.
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
        self.n_prefixes, edges, prefixes = _number_prefixes(codes, item_ids)
        item_prefixes = torch.zeros(self.n_items_total, self.n_levels, dtype=torch.long)
        item_prefixes[torch.from_numpy(item_ids)] = torch.from_numpy(prefixes)
        # [n_items_total, L]: id of each item's length-l prefix (the beam state entering level l),
        # what a loss normalised over the valid codes (``candidates``) needs per target item.
        self.register_buffer("item_prefixes", item_prefixes, persistent=False)
        if layout == "auto":
            layouts = _auto_layouts(self.level_sizes, self.n_prefixes, [_max_degree(e[0]) for e in edges])
        else:
            layouts = [layout] * self.n_levels
        self.levels = nn.ModuleList(
            _DenseLevel(size, n_parent, *level_edges)
            if kind == "dense"
            else _SparseLevel(n_parent, *level_edges, last=level == self.n_levels - 1)
            for level, (kind, size, n_parent, level_edges) in enumerate(
                zip(layouts, self.level_sizes, self.n_prefixes, edges)
            )
        )

    @property
    def layouts(self) -> list[str]:
        """Layout of each level, ``dense`` or ``sparse``."""
        return [level.layout for level in self.levels]

    @property
    def layout(self) -> str:
        """``dense`` or ``sparse`` when every level has it, else ``mixed``."""
        kinds = set(self.layouts)
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def width(self, level: int) -> int:
        """Candidate slots per beam at ``level`` (dense: the level's codes; sparse: max children)."""
        return self.levels[level].width

    def candidates(self, level: int, prefix: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """Scores ``[..., width(level)]`` of each beam's slots: the code's log-prob, ``-inf`` if not allowed.

        Args:
            prefix: ``[...]`` prefix ids of length ``level``.
            log_probs: ``[..., level_sizes[level]]`` log-probabilities of this level's codes.
        """
        return self.levels[level].candidates(prefix, log_probs)

    def follow(self, level: int, prefix: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(code, child)`` of the chosen ``slot`` of each ``prefix`` (same shapes).

        ``child`` is the prefix id of length ``level + 1`` (the item id at the last level), ``-1``
        where the slot is not a real child; ``code`` is then an arbitrary valid code.
        """
        return self.levels[level].follow(prefix, slot)

    def nbytes(self) -> int:
        """Bytes held by the decoding tables (what grows with the catalogue); ``item_prefixes``
        (``8 * n_levels`` bytes per item, used by training losses only) is not counted."""
        return sum(b.numel() * b.element_size() for b in self.levels.buffers())

    def extra_repr(self) -> str:
        return (
            f"layouts={self.layouts}, level_sizes={self.level_sizes}, n_prefixes={self.n_prefixes}, "
            f"{self.nbytes() / 2**20:.1f} MB"
        )


def _max_degree(parent: torch.Tensor) -> int:
    """Most children of any prefix, from an edge list's (sorted) parent ids."""
    return int(torch.unique_consecutive(parent, return_counts=True)[1].max())


def _auto_layouts(level_sizes: list[int], n_prefixes: list[int], max_degree: list[int]) -> list[str]:
    """Per level, ``dense`` where it scores fewer slot-costs per beam and still fits, else ``sparse``.

    Per beam a dense step scores ``level_sizes[l]`` slots, a sparse one ``max_degree[l]`` slots
    at :data:`SPARSE_SLOT_COST` each. Levels are visited shallow first (their tables are the
    small ones); a level whose ``12 * n_prefixes * codes`` bytes would take the dense total over
    :data:`AUTO_DENSE_MAX_BYTES` stays sparse.
    """
    layouts, dense_bytes = [], 0
    for size, n_parent, degree in zip(level_sizes, n_prefixes, max_degree):
        level_bytes = 12 * n_parent * size
        if size <= SPARSE_SLOT_COST * degree and dense_bytes + level_bytes <= AUTO_DENSE_MAX_BYTES:
            layouts.append("dense")
            dense_bytes += level_bytes
        else:
            layouts.append("sparse")
    return layouts


def _number_prefixes(codes: np.ndarray, item_ids: np.ndarray) -> tuple[list[int], list[tuple], np.ndarray]:
    """Number every distinct prefix in lexicographic order and list each level's edges.

    Sorting the tuples once puts every prefix's children next to each other, in code order; a
    prefix of length ``l + 1`` starts wherever a row differs from the previous one within its
    first ``l + 1`` codes. Returns ``n_prefixes`` (per level, the prefixes of length ``l``) and
    per level ``(parent, code, child)`` int64 tensors, one entry per edge, sorted by parent then
    code; ``child`` is the edge's own index (= the next level's prefix id), or the item id at the
    last level; and ``[n_items, L]`` the prefix id of each item's first ``l`` codes (rows in the
    order of ``item_ids``). Raises on duplicate tuples.
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
    prefixes = np.empty((n_items, n_levels), dtype=np.int64)
    n_parent = 1
    for level in range(n_levels):
        prefixes[order, level] = parent_of_row
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
    return n_prefixes, edges, prefixes
