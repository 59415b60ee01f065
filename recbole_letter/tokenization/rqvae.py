"""Residual-quantised VAE (RQ-VAE) used by TIGER and LETTER to turn item embeddings into codes.

``x --encoder--> z --L residual codebooks--> codes [L], z_q --decoder--> x_hat``

Level ``l`` quantises the residual ``r_l`` (``r_0 = z``, ``r_{l+1} = r_l - e_l``) to its nearest
code ``e_l``; ``z_q = sum_l e_l`` is passed to the decoder with a straight-through estimator so
the reconstruction gradient reaches the encoder. The module holds only the network and the
quantiser; the LETTER regularisers live in :mod:`.losses` and the fit loop in :mod:`.fit`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from .kmeans import SeedLike, as_generator, kmeans, sinkhorn_assign, squared_distances
from .losses import quantization_loss, reconstruction_loss


def build_mlp(dims: Sequence[int], dropout: float = 0.0, batchnorm: bool = False) -> nn.Sequential:
    """``Linear`` stack over ``dims`` with ReLU (+ optional BatchNorm / dropout) between layers.

    Like the released LETTER code: dropout before every linear layer, no activation after the
    last one (the latent and the reconstruction are unconstrained real vectors), Xavier-normal
    weights and zero biases.
    """
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        linear = nn.Linear(d_in, d_out)
        nn.init.xavier_normal_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(dims) - 2:
            if batchnorm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@dataclass
class RQVAEOutput:
    """Everything one forward pass produces.

    ``residuals[:, l]`` is the vector level ``l`` quantised and ``quantized[:, l]`` the code
    vector chosen for it (with gradient to the codebook), so callers can build further losses
    without recomputing the quantiser.
    """

    recon: torch.Tensor  # [B, in_dim]
    z: torch.Tensor  # [B, code_dim] encoder output
    z_q: torch.Tensor  # [B, code_dim] straight-through quantised latent
    codes: torch.Tensor  # [B, L] int64
    residuals: torch.Tensor  # [B, L, code_dim]
    quantized: torch.Tensor  # [B, L, code_dim]
    recon_loss: torch.Tensor
    quant_loss: torch.Tensor  # mean over levels of codebook + beta * commitment
    codebook_loss: torch.Tensor  # mean over levels
    commitment_loss: torch.Tensor  # mean over levels


def sinkhorn_level_set(levels: Sequence[int], num_levels: int) -> frozenset[int]:
    """0-based level indices from 1-based ``levels`` (negative = from the end, ``-1`` = last)."""
    if isinstance(levels, (str, bytes)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in levels):
        raise TypeError(f"sinkhorn_levels must be a list of level numbers like [-1] or [2, 3, 4], got {levels!r}")
    out = set()
    for lvl in levels:
        index = lvl - 1 if lvl > 0 else num_levels + lvl
        if lvl == 0 or not 0 <= index < num_levels:
            raise ValueError(
                f"sinkhorn_levels {list(levels)}: level {lvl} does not exist with num_levels={num_levels}; "
                f"use 1..{num_levels} or -1..-{num_levels} (-1 = last)"
            )
        out.add(index)
    return frozenset(out)


class RQVAE(nn.Module):
    """MLP encoder/decoder around ``num_levels`` residual codebooks.

    Default sizes: the paper maps 4096-d LLaMA embeddings through 2048-1024-512-256-128-64 to a
    32-d latent (halving per layer). Our default text encoder is 384-d MiniLM, so the same
    halving pyramid from 384 gives ``hidden_dims = (256, 128, 64)`` and ``code_dim = 32``: the
    latent size and codebooks (4 x 256) are the paper's, and the encoder is as deep relative to
    its input as the paper's without adding layers wider than the input.

    Args:
        in_dim: input (semantic) embedding size.
        hidden_dims: encoder hidden sizes; the decoder mirrors them.
        code_dim: latent / codebook vector size.
        num_levels: number of residual codebooks.
        codebook_size: codes per level, an int or one int per level.
        dropout: dropout before each linear layer.
        batchnorm: BatchNorm1d after each hidden linear layer.
        commitment_beta: weight of the commitment term (0.25 in VQ-VAE, TIGER and LETTER).
        cf_dim: size of the CF embeddings for LETTER's L_CF. When it differs from ``code_dim``
            a learnable bias-free linear map ``cf_dim -> code_dim`` (``cf_proj``, trained
            jointly) aligns the two spaces; when equal (LETTER's own 32-d SASRec setting) the CF
            embedding is used as is, like the released code. ``None`` = no CF term.
        sinkhorn_levels: levels (1-based; negative counts from the end, ``-1`` = last) assigned
            by Sinkhorn-balanced transport instead of nearest code, which spreads items evenly
            over those codebooks while training. LETTER / LC-Rec: the last level only (the
            default); ``()`` = nearest code everywhere.
        id_sinkhorn_levels: levels assigned by Sinkhorn when the final semantic IDs are
            computed (:meth:`get_codes`, over the whole catalogue at once); ``None`` = the same
            as ``sinkhorn_levels``. Balancing the deeper levels only here, not in training,
            spreads their usage without changing what the network learns (see ``fit``).
        sinkhorn_epsilon / sinkhorn_iters: entropic regularisation and iterations.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int] = (256, 128, 64),
        code_dim: int = 32,
        num_levels: int = 4,
        codebook_size: int | Sequence[int] = 256,
        dropout: float = 0.0,
        batchnorm: bool = False,
        commitment_beta: float = 0.25,
        cf_dim: int | None = None,
        sinkhorn_levels: Sequence[int] = (-1,),
        sinkhorn_epsilon: float = 0.003,
        sinkhorn_iters: int = 50,
        id_sinkhorn_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(codebook_size, int):
            sizes = [codebook_size] * num_levels
        else:
            sizes = [int(s) for s in codebook_size]
            if len(sizes) != num_levels:
                raise ValueError(
                    f"codebook_size lists {len(sizes)} sizes but num_levels={num_levels}; give one size per level"
                )
        if num_levels < 1 or any(s < 1 for s in sizes):
            raise ValueError(f"need num_levels >= 1 and codebook sizes >= 1, got {num_levels} levels, sizes {sizes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if sinkhorn_epsilon <= 0:
            raise ValueError(f"sinkhorn_epsilon must be > 0, got {sinkhorn_epsilon}")
        self.in_dim = int(in_dim)
        self.code_dim = int(code_dim)
        self.codebook_sizes = sizes
        self.commitment_beta = float(commitment_beta)
        self.sinkhorn_levels = sinkhorn_level_set(sinkhorn_levels, num_levels)  # 0-based
        self.id_sinkhorn_levels = (
            self.sinkhorn_levels if id_sinkhorn_levels is None else sinkhorn_level_set(id_sinkhorn_levels, num_levels)
        )
        self.sinkhorn_epsilon = float(sinkhorn_epsilon)
        self.sinkhorn_iters = int(sinkhorn_iters)
        dims = [self.in_dim, *[int(h) for h in hidden_dims], self.code_dim]
        self.encoder = build_mlp(dims, dropout, batchnorm)
        self.decoder = build_mlp(dims[::-1], dropout, batchnorm)
        # Uniform(-1/K, 1/K) like the released code; replaced by k-means before training.
        self.codebooks = nn.ParameterList(
            [nn.Parameter(torch.empty(k, self.code_dim).uniform_(-1.0 / k, 1.0 / k)) for k in sizes]
        )
        self.register_buffer("codebooks_initialised", torch.tensor(False))
        self.cf_dim = cf_dim
        self.cf_proj = nn.Linear(cf_dim, self.code_dim, bias=False) if cf_dim and cf_dim != self.code_dim else None

    @property
    def num_levels(self) -> int:
        return len(self.codebooks)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output ``z`` (the continuous latent that gets quantised)."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected input [batch, {self.in_dim}], got {tuple(x.shape)}")
        return self.encoder(x)

    def project_cf(self, cf_emb: torch.Tensor) -> torch.Tensor:
        """Map CF embeddings into the code space (identity when the sizes already match)."""
        if self.cf_proj is not None:
            return self.cf_proj(cf_emb)
        if cf_emb.shape[-1] != self.code_dim:
            raise ValueError(
                f"CF embeddings have dim {cf_emb.shape[-1]} but the model was built with cf_dim={self.cf_dim} "
                f"and code_dim={self.code_dim}; build RQVAE with cf_dim={cf_emb.shape[-1]}"
            )
        return cf_emb

    def _sinkhorn_levels(self, use_sinkhorn: bool | None, levels: frozenset[int] | None) -> frozenset[int]:
        if use_sinkhorn is False:
            return frozenset()
        return self.sinkhorn_levels if levels is None else frozenset(levels)

    def _assign(self, residual: torch.Tensor, level: int, sinkhorn_levels: frozenset[int]) -> torch.Tensor:
        d = squared_distances(residual, self.codebooks[level])
        if level in sinkhorn_levels:
            return sinkhorn_assign(d, self.sinkhorn_epsilon, self.sinkhorn_iters)
        return d.argmin(dim=1)

    def quantize(
        self, z: torch.Tensor, use_sinkhorn: bool | None = None, sinkhorn_levels: frozenset[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residual quantisation of ``z``.

        Returns ``(z_q, codes, residuals, quantized, codebook_loss, commitment_loss)`` where the
        losses are means over levels. As in the released LETTER/LC-Rec code the next residual
        is computed from the straight-through output, which makes it carry no gradient:
        ``r_{l+1} = r_l - (r_l + sg(e_l - r_l)) = sg(r_l - e_l)``. So deeper codebooks learn
        from their codebook term, and only the first level's commitment term reaches the
        encoder (deeper commitment terms are reported but are constants for the optimiser).
        ``use_sinkhorn=None`` / ``True`` use Sinkhorn on ``sinkhorn_levels`` (0-based; default
        ``self.sinkhorn_levels``, the training levels), ``False`` nearest codes everywhere.
        Sinkhorn balances codes
        *within the given batch*, so pass whole catalogues (or large batches) when enabled.
        """
        if not bool(self.codebooks_initialised) and self.training:
            raise RuntimeError(
                "codebooks are not initialised; call init_codebooks(encoder outputs) before training "
                "(fit_tokenizer does this with k-means)"
            )
        sk_levels = self._sinkhorn_levels(use_sinkhorn, sinkhorn_levels)
        residual = z
        codes, residuals, quantized, cb_terms, cm_terms = [], [], [], [], []
        for level in range(self.num_levels):  # loop over levels only
            idx = self._assign(residual.detach(), level, sk_levels)
            e = self.codebooks[level][idx]
            _, cb, cm = quantization_loss(residual, e, self.commitment_beta)
            codes.append(idx)
            residuals.append(residual)
            quantized.append(e)
            cb_terms.append(cb)
            cm_terms.append(cm)
            residual = (residual - e).detach()
        e_sum = torch.stack(quantized, dim=1).sum(dim=1)
        z_q = z + (e_sum - z).detach()  # straight-through: value e_sum, gradient identity to z
        return (
            z_q,
            torch.stack(codes, dim=1),
            torch.stack(residuals, dim=1),
            torch.stack(quantized, dim=1),
            torch.stack(cb_terms).mean(),
            torch.stack(cm_terms).mean(),
        )

    def forward(self, x: torch.Tensor, use_sinkhorn: bool | None = None) -> RQVAEOutput:
        """Encode, quantise, decode; returns the tensors and the RQ-VAE loss parts."""
        z = self.encode(x)
        z_q, codes, residuals, quantized, cb, cm = self.quantize(z, use_sinkhorn)
        recon = self.decoder(z_q)
        return RQVAEOutput(
            recon=recon,
            z=z,
            z_q=z_q,
            codes=codes,
            residuals=residuals,
            quantized=quantized,
            recon_loss=reconstruction_loss(recon, x),
            quant_loss=cb + self.commitment_beta * cm,
            codebook_loss=cb,
            commitment_loss=cm,
        )

    @torch.no_grad()
    def init_codebooks(
        self, z: torch.Tensor, iters: int = 100, seed: SeedLike = 0, use_sinkhorn: bool | None = None
    ) -> None:
        """k-means initialisation of every codebook on encoder outputs ``z``, level by level.

        Level ``l`` is clustered on the residuals left by levels ``< l`` (assignments as in
        training, i.e. Sinkhorn on the last level if enabled -- which only matters for the
        residuals after it, so in practice nothing). Codes start on the data, so none is dead
        and the first epochs already reconstruct well. With fewer distinct points than codes
        the extra codes duplicate points and stay unused.
        """
        if z.dim() != 2 or z.shape[1] != self.code_dim:
            raise ValueError(f"expected encoder outputs [n, {self.code_dim}], got {tuple(z.shape)}")
        gen = as_generator(seed)
        sk_levels = self._sinkhorn_levels(use_sinkhorn, None)
        residual = z.detach()
        for level, book in enumerate(self.codebooks):
            centers, _ = kmeans(residual, book.shape[0], iters=iters, seed=gen)
            book.data.copy_(centers.to(book.dtype))
            idx = self._assign(residual, level, sk_levels)
            residual = residual - book[idx]
        self.codebooks_initialised.fill_(True)

    @torch.no_grad()
    def restart_dead_codes(
        self, z: torch.Tensor, used: Sequence[torch.Tensor], seed: SeedLike = 0
    ) -> list[torch.Tensor]:
        """Move every code no item was assigned to back onto the data ("random restart").

        Why: k-means puts the codes on the *initial* encoder outputs, but the encoder keeps
        moving its outputs (measured on ml-100k MiniLM embeddings: the RQ-VAE's latent spread
        shrinks from 0.085 to 0.035 within 20 steps; LETTER's dot-product CF term grows the
        latent norm from 0.15 to 0.6 within 40 steps). Codes left outside the new support get no
        item, hence no codebook gradient, and stay dead for good: level-1 utilisation fell from
        256/256 to 15/256 after 20 epochs and 57/256 after 200. Restarting them keeps the whole
        codebook in play while the encoder trains (VQ-VAE practice: Jukebox, SoundStream).

        ``z`` are current encoder outputs of the catalogue ``[n, code_dim]`` and ``used[l]`` a
        bool mask ``[K_l]`` of the level-``l`` codes that got at least one item since the last
        restart. Level by level, dead codes are set to residuals drawn without replacement with
        probability proportional to their squared quantisation error (k-means++ style, so the
        worst-quantised regions get the new codes), then the residuals are recomputed with the
        updated codebook before the next level. Returns the restarted code indices per level.
        """
        if len(used) != self.num_levels:
            raise ValueError(f"need one usage mask per level ({self.num_levels}), got {len(used)}")
        gen = as_generator(seed)
        residual = z.detach()
        restarted: list[torch.Tensor] = []
        for level, book in enumerate(self.codebooks):
            dead = (~used[level].to(book.device)).nonzero().squeeze(1)
            d = squared_distances(residual, book)
            err = d.min(dim=1).values
            # a point already sitting on a code has error 0 and cannot seed another one
            k = min(dead.numel(), int((err > 0).sum()))
            if k:
                picks = torch.multinomial(err.double().cpu(), k, replacement=False, generator=gen).to(book.device)
                book.data[dead[:k]] = residual[picks].to(book.dtype)
                d = squared_distances(residual, book)
            restarted.append(dead[:k])
            residual = residual - book[d.argmin(dim=1)]
        return restarted

    @torch.no_grad()
    def get_codes(self, x: torch.Tensor, use_sinkhorn: bool | None = None) -> torch.Tensor:
        """Semantic IDs ``[B, L]`` for inputs ``x``: Sinkhorn on ``id_sinkhorn_levels`` (balanced
        across the rows of ``x``, so pass the whole catalogue), or nearest codes everywhere with
        ``use_sinkhorn=False`` (what a handful of cold-start items needs)."""
        z = self.encode(x)
        return self.quantize(z, use_sinkhorn, self.id_sinkhorn_levels)[1]
