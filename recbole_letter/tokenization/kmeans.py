"""Clustering and balanced-assignment primitives used by the residual quantiser.

Three tools, all vectorised over points (the only Python loops are over k-means++ seeds,
Lloyd iterations and Sinkhorn iterations):

* :func:`kmeans` -- k-means++ seeding + Lloyd iterations in torch. Used to initialise each
  codebook on the encoder outputs (level by level on residuals), as LETTER/TIGER do, so that
  training starts with every code on the data instead of with dead codes.
* :func:`balanced_kmeans` -- k-means whose assignment step is an exact min-cost assignment under
  capacities ``floor(n/k)`` / ``ceil(n/k)`` (solved with SciPy's Hungarian solver). LETTER uses a
  size-constrained k-means over each *codebook* to build the groups of its diversity loss; a
  codebook has a few hundred rows, so the cubic solver costs milliseconds.
* :func:`sinkhorn_assign` -- Sinkhorn-Knopp on a distance matrix, returning a balanced hard
  assignment. LETTER (following LC-Rec) uses it for the last code level so items spread over
  the last codebook and fewer of them collide.

Everything is deterministic given ``seed`` (an ``int`` or a ``torch.Generator``): random draws
come from a CPU generator and are moved to the data's device afterwards, so CPU and GPU runs
draw the same numbers.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

SeedLike = int | torch.Generator


def as_generator(seed: SeedLike) -> torch.Generator:
    """Return a CPU generator: the caller's own (so draws continue its stream) or a fresh one."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(seed))
        return gen
    raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")


def _as_points(x: torch.Tensor | np.ndarray, name: str = "x") -> torch.Tensor:
    """Validate a [n, d] finite float matrix and return it as a torch tensor (no copy if possible)."""
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [n, d] matrix, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    if t.shape[0] == 0:
        raise ValueError(f"{name} has no rows; pass at least one point")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values; clean the input first")
    return t


def squared_distances(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``[n, k]`` via the expansion ||x||^2 - 2x.c + ||c||^2.

    One matmul instead of an ``[n, k, d]`` difference tensor; clamped at 0 because the expansion
    can go slightly negative in floating point.
    """
    d = (
        x.pow(2).sum(dim=1, keepdim=True)
        - 2.0 * x @ centers.t()
        + centers.pow(2).sum(dim=1).unsqueeze(0)
    )
    return d.clamp_min_(0.0)


def kmeans_plusplus(x: torch.Tensor, k: int, seed: SeedLike = 0) -> torch.Tensor:
    """k-means++ seeding: each new centre is drawn with probability proportional to D(x)^2.

    Gives well-spread initial centres so Lloyd converges to a good optimum in few iterations.
    When fewer than ``k`` distinct points exist (D^2 all zero) the remaining centres are drawn
    uniformly, i.e. duplicated; duplicates simply stay unused codes.
    """
    x = _as_points(x)
    gen = as_generator(seed)
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    idx = torch.empty(k, dtype=torch.long)
    idx[0] = torch.randint(n, (1,), generator=gen)[0]
    centers = x.new_empty((k, x.shape[1]))
    centers[0] = x[idx[0]]
    min_d = squared_distances(x, centers[:1]).squeeze(1)
    for c in range(1, k):  # loop over centres (k), never over points
        total = float(min_d.sum())
        if total > 0.0:
            probs = (min_d / total).double().cpu()
            pick = torch.multinomial(probs, 1, generator=gen)[0]
        else:
            pick = torch.randint(n, (1,), generator=gen)[0]
        centers[c] = x[pick]
        min_d = torch.minimum(min_d, squared_distances(x, centers[c : c + 1]).squeeze(1))
    return centers


def kmeans(
    x: torch.Tensor | np.ndarray,
    k: int,
    iters: int = 100,
    seed: SeedLike = 0,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd k-means with k-means++ seeding; returns ``(centers [k, d], labels [n])``.

    Empty clusters are re-seeded with the points currently farthest from their centre (the
    usual fix that keeps every code alive). Iteration stops early when no centre moves more
    than ``tol`` (relative to the data's mean squared norm). Deterministic for a given seed.
    """
    x = _as_points(x)
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    gen = as_generator(seed)
    centers = kmeans_plusplus(x, k, gen)
    scale = float(x.pow(2).sum(dim=1).mean()) + 1e-12
    labels = squared_distances(x, centers).argmin(dim=1)
    for _ in range(iters):
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        new_centers = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        empty = counts == 0
        n_empty = int(empty.sum())
        if n_empty:
            own = squared_distances(x, new_centers).gather(1, labels.unsqueeze(1)).squeeze(1)
            far = own.topk(min(n_empty, x.shape[0])).indices
            slots = empty.nonzero().squeeze(1)[: far.numel()]
            new_centers[slots] = x[far]
        shift = float((new_centers - centers).pow(2).sum(dim=1).max()) / scale
        centers = new_centers
        labels = squared_distances(x, centers).argmin(dim=1)
        if shift <= tol and not n_empty:
            break
    return centers, labels


def balanced_assign(distances: torch.Tensor) -> torch.Tensor:
    """Exact min-cost assignment of ``n`` points to ``k`` clusters with sizes ``floor``/``ceil(n/k)``.

    Each cluster gets ``q = n // k`` mandatory slots and one optional slot (only when ``n % k``).
    Mandatory slots carry a large bonus, so the Hungarian solver fills all of them first and the
    ``n % k`` left-over points go to distinct optional slots: every size is ``q`` or ``q + 1``.
    Cost is O(n^3); meant for codebooks (hundreds to a few thousand rows), not for items.
    """
    n, k = distances.shape
    if n < k:
        raise ValueError(f"balanced assignment needs at least as many points as clusters, got n={n} < k={k}")
    q, r = divmod(n, k)
    d = distances.detach().double().cpu().numpy()
    d = d - d.min()
    bonus = d.max() * n + 1.0
    slots_per_cluster = q + (1 if r else 0)
    # columns ordered [cluster 0 slot 0..s-1, cluster 1 slot 0..s-1, ...]
    cost = np.repeat(d, slots_per_cluster, axis=1)
    mandatory = np.tile(np.arange(slots_per_cluster) < q, k)
    cost[:, mandatory] -= bonus
    rows, cols = linear_sum_assignment(cost)
    labels = np.empty(n, dtype=np.int64)
    labels[rows] = cols // slots_per_cluster
    return torch.from_numpy(labels).to(distances.device)


def balanced_kmeans(
    x: torch.Tensor | np.ndarray,
    k: int,
    seed: SeedLike = 0,
    iters: int = 20,
) -> torch.Tensor:
    """Size-balanced k-means: labels ``[n]`` with every cluster of size ``floor`` or ``ceil(n/k)``.

    Lloyd iterations whose assignment step is :func:`balanced_assign`; stops when labels are
    stable. LETTER's diversity loss needs groups of codes that are both *similar* (so a positive
    from the same group is meaningful) and *equal-sized* (so no group is a singleton without a
    positive, and no group dominates) -- plain k-means gives neither guarantee.
    """
    x = _as_points(x)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if x.shape[0] < k:
        raise ValueError(
            f"balanced_kmeans needs at least k={k} points, got {x.shape[0]}; lower the number of clusters"
        )
    gen = as_generator(seed)
    centers = kmeans_plusplus(x, k, gen)
    labels = balanced_assign(squared_distances(x, centers))
    for _ in range(iters):
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).clamp_min(1).unsqueeze(1).to(x.dtype)
        centers = sums / counts
        new_labels = balanced_assign(squared_distances(x, centers))
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels


@torch.no_grad()
def sinkhorn_assign(distances: torch.Tensor, epsilon: float = 0.003, iters: int = 50) -> torch.Tensor:
    """Balanced hard assignment ``[n]`` from a distance matrix ``[n, k]`` by Sinkhorn-Knopp.

    Solves the entropic optimal-transport problem with uniform marginals (every point has mass
    ``1/n``, every code receives ``1/k``) on the *negative* distances, then takes each row's
    argmax. As in the LETTER/LC-Rec code, distances are first rescaled to ``[-1, 1]`` so that
    ``epsilon`` has the same meaning for every batch, the scaling runs in float64, and each
    iteration normalises rows then columns.

    Numerics: the Gibbs kernel is shifted by its row maxima (absorbed by the row scaling, so the
    result is unchanged). For ``epsilon >= 2/700`` every kernel entry then lies in
    ``[exp(-700), 1]`` and the fast multiplicative updates are exact in float64; for smaller
    ``epsilon`` entries would underflow to 0, so the same updates run in the log domain
    (``logsumexp``, about 5x slower) instead.
    """
    if distances.dim() != 2:
        raise ValueError(f"distances must be [n, k], got shape {tuple(distances.shape)}")
    if epsilon <= 0:
        raise ValueError(f"sinkhorn epsilon must be > 0, got {epsilon}")
    d = distances.double()
    hi, lo = d.max(), d.min()
    middle = (hi + lo) / 2
    amplitude = hi - middle + 1e-5
    log_k = -((d - middle) / amplitude) / epsilon  # log of the Gibbs kernel, range <= 2/epsilon
    log_k = log_k - log_k.max(dim=1, keepdim=True).values
    n, k = d.shape
    if 2.0 / epsilon < 700.0:
        q = torch.exp(log_k)
        col = torch.ones((1, k), dtype=d.dtype, device=d.device)
        for _ in range(iters):
            row = 1.0 / (n * (q * col).sum(dim=1, keepdim=True))
            col = 1.0 / (k * (q * row).sum(dim=0, keepdim=True))
        # the row scaling is constant within a row, so it does not change the argmax
        return (q * col).argmax(dim=1)
    log_row = -float(np.log(n))
    log_col = -float(np.log(k))
    u = torch.zeros((n, 1), dtype=d.dtype, device=d.device)
    v = torch.zeros((1, k), dtype=d.dtype, device=d.device)
    for _ in range(iters):
        u = log_row - torch.logsumexp(log_k + v, dim=1, keepdim=True)
        v = log_col - torch.logsumexp(log_k + u, dim=0, keepdim=True)
    return (log_k + v).argmax(dim=1)
