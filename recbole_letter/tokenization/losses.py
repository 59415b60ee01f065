"""Loss terms of the LETTER tokenizer (arXiv 2405.07314), each a small pure function.

    total = recon + quant + alpha * L_CF + beta * L_Div

* ``recon``  -- MSE between the input embedding and the decoder output.
* ``quant``  -- per level ``codebook + commitment_beta * commitment``, averaged over levels.
  Both are element-wise means (``F.mse_loss``), as in the released LETTER / LC-Rec code.
* ``L_CF``   -- in-batch InfoNCE aligning each item's quantised embedding with its
  collaborative (CF) embedding; the other items in the batch are the negatives.
* ``L_Div``  -- per level, InfoNCE pulling an item's assigned code vector towards another code of
  the same (balanced) codebook cluster and away from the rest of the codebook, which spreads
  code usage and reduces collisions; averaged over levels.

All functions are batched; the only randomness (diversity positives) takes an explicit
``torch.Generator`` so runs are reproducible.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements -- the RQ-VAE semantic-preservation term."""
    if recon.shape != x.shape:
        raise ValueError(f"recon shape {tuple(recon.shape)} != input shape {tuple(x.shape)}")
    return F.mse_loss(recon, x)


def quantization_loss(
    residual: torch.Tensor, codeword: torch.Tensor, commitment_beta: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VQ loss of one level: ``mean((sg(r) - e)^2) + commitment_beta * mean((r - sg(e))^2)``.

    The codebook term moves the chosen code ``e`` towards the residual ``r`` it quantises; the
    commitment term keeps the encoder's residual near its code so the latent space does not
    drift away from the codebook. Returns ``(total, codebook_term, commitment_term)``.
    """
    codebook = F.mse_loss(codeword, residual.detach())
    commitment = F.mse_loss(residual, codeword.detach())
    return codebook + commitment_beta * commitment, codebook, commitment


def cf_contrastive_loss(z_q: torch.Tensor, cf_emb: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """In-batch InfoNCE between quantised item embeddings and their CF embeddings (LETTER's L_CF).

    ``logits[i, j] = <z_q[i], cf_emb[j]> / temperature`` and the loss is the cross-entropy of
    each row against its diagonal entry, i.e.
    ``-1/B sum_i log( exp(<z_i, h_i>/t) / sum_j exp(<z_i, h_j>/t) )``.
    We follow the released LETTER code: a *dot product* (not cosine) and temperature 1. The dot
    product lets the encoder use vector norm as well as direction; in LETTER ``z_q`` is the
    straight-through quantised embedding, so the gradient reaches the encoder (and the CF
    projection, when present) but not the codebooks.
    """
    if z_q.dim() != 2 or cf_emb.dim() != 2:
        raise ValueError(f"z_q and cf_emb must be 2-D, got {tuple(z_q.shape)} and {tuple(cf_emb.shape)}")
    if z_q.shape != cf_emb.shape:
        raise ValueError(
            f"z_q {tuple(z_q.shape)} and cf_emb {tuple(cf_emb.shape)} must have the same shape; "
            "project the CF embedding to the code dimension first"
        )
    if temperature <= 0:
        raise ValueError(f"cf temperature must be > 0, got {temperature}")
    logits = z_q @ cf_emb.t() / temperature
    target = torch.arange(z_q.shape[0], device=z_q.device)
    return F.cross_entropy(logits, target)


def sample_cluster_positives(
    codes: torch.Tensor, cluster_labels: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each assigned code, draw a uniformly random *other* code from its cluster.

    Vectorised "skip-self" trick: sort the codebook by cluster so each cluster is a contiguous
    run ``[start, start + size)``; for a code at rank ``p`` in its run draw ``r`` uniform in
    ``[0, size - 1)`` and use rank ``r + (r >= p)``, which is uniform over the other members.
    Returns ``(positives [B], valid [B])``; ``valid`` is False where the cluster is a singleton
    (no positive exists -- cannot happen with :func:`balanced_kmeans` and >= 2 codes per cluster).
    """
    k = cluster_labels.shape[0]
    device = codes.device
    labels = cluster_labels.to(device)
    order = torch.sort(labels, stable=True).indices  # codes grouped by cluster
    n_clusters = int(labels.max()) + 1
    sizes = torch.bincount(labels, minlength=n_clusters)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty(k, dtype=torch.long, device=device)
    rank[order] = torch.arange(k, device=device) - starts[labels[order]]
    cluster = labels[codes]
    size = sizes[cluster]
    u = torch.rand(codes.shape, generator=generator).to(device)
    r = (u * (size - 1).clamp_min(1).to(u.dtype)).long().clamp_max((size - 2).clamp_min(0))
    r = r + (r >= rank[codes]).long()
    positives = order[(starts[cluster] + r).clamp_max(k - 1)]
    return positives, size > 1


def diversity_loss(
    codebook: torch.Tensor,
    codes: torch.Tensor,
    cluster_labels: torch.Tensor,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """LETTER's codebook diversity loss for one level.

    For item ``i`` with assigned code ``c_i`` (vector ``e_{c_i}``), the positive is another code
    ``p_i`` of the same cluster and the negatives are all other codes of the level:
    ``-log( exp(<e_{c_i}, e_{p_i}>/t) / sum_{j != c_i} exp(<e_{c_i}, e_j>/t) )``.
    As in the released code, what is contrasted is the item's quantised embedding at this level
    -- the code vector itself, so the gradient moves codebook entries (not the encoder) -- by dot
    product, and the code itself is excluded from the softmax. Rows whose cluster has no other
    member are dropped. ``positives`` may be passed explicitly (tests); otherwise they are drawn
    with :func:`sample_cluster_positives` from ``generator``.
    """
    if temperature <= 0:
        raise ValueError(f"diversity temperature must be > 0, got {temperature}")
    if cluster_labels.shape[0] != codebook.shape[0]:
        raise ValueError(
            f"cluster_labels has {cluster_labels.shape[0]} entries but the codebook has {codebook.shape[0]} codes; "
            "recompute the clusters for this codebook"
        )
    if positives is None:
        positives, valid = sample_cluster_positives(codes, cluster_labels, generator)
    else:
        valid = positives != codes
    if not bool(valid.any()):
        return codebook.sum() * 0.0
    codes, positives = codes[valid], positives[valid]
    anchor = codebook[codes]  # [B, D]
    logits = anchor @ codebook.t() / temperature  # [B, K]
    self_mask = F.one_hot(codes, codebook.shape[0]).bool()
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, positives)
