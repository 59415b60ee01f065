"""Fit loop of the LETTER / TIGER item tokenizer (pure torch, no RecBole imports).

``fit_tokenizer(text_embeddings, cf_embeddings, cfg)`` trains an :class:`~.rqvae.RQVAE` with

    loss = recon + quant + alpha * L_CF + beta * L_Div

and returns the model, the item codes from a final deterministic pass, the per-epoch loss
history and throughput. ``alpha = beta = 0`` is the plain RQ-VAE of TIGER (and then the CF and
diversity terms are not computed at all, so no CF embeddings are needed).

Efficiency: all item embeddings live in one device tensor; each epoch draws one permutation and
slices it into near-equal batches (no DataLoader, no per-row Python work). The only Python loops
are over epochs, batches and code levels.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .kmeans import balanced_kmeans
from .losses import cf_contrastive_loss, diversity_loss
from .report import explained_variance
from .rqvae import RQVAE, RQVAEOutput, sinkhorn_level_set


CF_SIMILARITIES = ("cosine", "dot")
RECON_SCALES = ("variance", "none")


@dataclass
class TokenizerConfig:
    """Hyper-parameters of the tokenizer; defaults follow the LETTER paper / released code.

    Where we deviate from the released code it is deliberate and stated here:

    * ``epochs``: the released script trains 20,000 epochs on a GPU; 200 keeps a CPU fit of a
      ~10k-item catalogue to minutes while reconstruction and collision rate have mostly
      levelled off (k-means initialisation does most of the work). Raise it for final runs.
    * ``hidden_dims``: (256, 128, 64) for 384-d MiniLM inputs, see :class:`~.rqvae.RQVAE`.
    * ``alpha`` / ``beta``: 0.02 / 1e-4 (paper's recommended range; the released script uses
      alpha 0.01, beta 1e-4 for Instruments).
    * ``recon_scale``: ``none`` (the released raw MSE) by default; ``variance`` divides the MSE by
      the inputs' mean per-dimension variance, so the term is the share of text-embedding
      variance left unreconstructed. The raw MSE of unit-norm 384-d MiniLM rows is ~1e-3, so the
      CF and quantisation terms dominate the encoder and LETTER keeps 26% of the text variance on
      ml-1m (RQ-VAE: 43%). ``variance`` with alpha 1.0 / cf_temperature 0.5 keeps 32-33% and
      raises ml-100k's CF lift, but lowers ml-1m's (52 -> 29): measured in the README.
    * ``id_sinkhorn_from_level``: 2 -- the final IDs of levels 2..L are Sinkhorn-balanced over the
      whole catalogue (the released code balances only the last level). Under the CF term the
      deeper residuals carry little structure and nearest-code assignment piles items onto a
      few small-norm codes (ml-1m: Gini 0.68 at level 3, one code with most items). Balancing
      only the final assignment fixes usage at ~1 point of explained variance and leaves the
      CF-aligned first level untouched; balancing those levels *during training*
      (``sinkhorn_levels``) was measured worse (first level skewed, CF lift 26.6 -> 18.0).
    * ``div_refresh_every``: the released code re-clusters every codebook before *every*
      epoch. Codebooks move slowly after k-means initialisation (lr 1e-3, and L_Div has weight
      1e-4), so the balanced clusters barely change between consecutive epochs; refreshing every
      ``div_refresh_every`` epochs keeps the groups current at a fraction of the cost. Set it to 1
      for the released behaviour.
    * ``div_temperature``: 1.0, i.e. the released code's plain dot products.
    * ``cf_similarity`` / ``cf_temperature``: ``cosine`` / 0.1 instead of the released code's
      plain dot product. A dot-product InfoNCE is lowered by simply growing the latent: with
      unit-scale text embeddings (MiniLM) the encoder output norm grew 4x within 40 steps, out
      of the support the k-means-initialised codebooks cover, so level 1 collapsed to a few
      codes and 37% of ml-100k items collided (the RQ-VAE alone: 2%). Cosine similarity keeps
      the alignment signal (it is what the paper's loss rewards) without the scale incentive.
      ``cf_similarity: dot`` with ``cf_temperature: 1.0`` gives the released behaviour.
    * ``cf_levels``: 0, the CF contrast sees the whole quantised latent as in the released code;
      ``k`` contrasts only the sum of the first ``k`` codes (see ``_cf_side``).
    * ``restart_dead_codes_every``: 1 (not in the released code, which trains 20k epochs on a
      GPU and keeps the checkpoint with the fewest collisions). After k-means initialisation
      the encoder keeps moving its outputs and codes outside their new support never get an
      item again; every ``restart_dead_codes_every`` epochs the codes no item was assigned to
      during those epochs are moved back onto the data (see
      :meth:`~.rqvae.RQVAE.restart_dead_codes`). 0 switches it off.
    """

    # architecture
    hidden_dims: tuple[int, ...] = (256, 128, 64)
    code_dim: int = 32
    num_levels: int = 4
    codebook_size: int | tuple[int, ...] = 256
    dropout: float = 0.0
    batchnorm: bool = False
    # quantiser
    commitment_beta: float = 0.25
    kmeans_init: bool = True
    kmeans_iters: int = 100
    sinkhorn_levels: tuple[int, ...] = (-1,)
    id_sinkhorn_from_level: int = 2
    sinkhorn_epsilon: float = 0.003
    sinkhorn_iters: int = 50
    recon_scale: str = "none"
    # LETTER regularisers
    alpha: float = 0.02
    beta: float = 1e-4
    cf_similarity: str = "cosine"
    cf_temperature: float = 0.1
    cf_levels: int = 0
    div_temperature: float = 1.0
    n_div_clusters: int = 10
    div_refresh_every: int = 10
    restart_dead_codes_every: int = 1
    # optimisation
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 1024
    epochs: int = 200
    seed: int = 2024
    device: str = "cpu"
    encode_batch_size: int = 8192

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        if isinstance(self.sinkhorn_levels, (list, tuple)):
            self.sinkhorn_levels = tuple(self.sinkhorn_levels)
        if not isinstance(self.codebook_size, int):
            self.codebook_size = tuple(int(s) for s in self.codebook_size)
        checks = {
            "code_dim": self.code_dim >= 1,
            "num_levels": self.num_levels >= 1,
            "batch_size": self.batch_size >= 2,
            "epochs": self.epochs >= 0,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "alpha": self.alpha >= 0,
            "beta": self.beta >= 0,
            "cf_temperature": self.cf_temperature > 0,
            "cf_levels": 0 <= self.cf_levels <= self.num_levels,
            "div_temperature": self.div_temperature > 0,
            "n_div_clusters": self.n_div_clusters >= 1,
            "div_refresh_every": self.div_refresh_every >= 1,
            "restart_dead_codes_every": self.restart_dead_codes_every >= 0,
            "cf_similarity": self.cf_similarity in CF_SIMILARITIES,
            "recon_scale": self.recon_scale in RECON_SCALES,
            "kmeans_iters": self.kmeans_iters >= 0,
            "sinkhorn_epsilon": self.sinkhorn_epsilon > 0,
            "sinkhorn_iters": self.sinkhorn_iters >= 1,
            "encode_batch_size": self.encode_batch_size >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            hint = f"; cf_similarity must be one of {CF_SIMILARITIES}" if "cf_similarity" in bad else ""
            hint += f"; recon_scale must be one of {RECON_SCALES}" if "recon_scale" in bad else ""
            hint += f"; cf_levels must be 0 (whole latent) .. num_levels ({self.num_levels})" if "cf_levels" in bad else ""
            raise ValueError(
                f"invalid tokenizer config value(s) {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}{hint}"
            )
        sinkhorn_level_set(self.sinkhorn_levels, self.num_levels)  # clear error for a level that does not exist
        if not 0 <= self.id_sinkhorn_from_level <= self.num_levels:
            raise ValueError(
                f"id_sinkhorn_from_level={self.id_sinkhorn_from_level} must be 0 (off) or a level 1..{self.num_levels}"
            )
        sizes = self.codebook_sizes
        if len(sizes) != self.num_levels:
            raise ValueError(
                f"codebook_size lists {len(sizes)} sizes but num_levels={self.num_levels}; give one size per level"
            )
        if self.beta > 0 and min(sizes) < 2 * self.n_div_clusters:
            raise ValueError(
                f"diversity loss needs >= 2 codes per cluster: codebook size {min(sizes)} < "
                f"2 * n_div_clusters ({self.n_div_clusters}); lower n_div_clusters or set beta=0"
            )

    @property
    def id_sinkhorn_levels(self) -> list[int]:
        """1-based levels whose final IDs are Sinkhorn-balanced: the training ones plus every level
        from ``id_sinkhorn_from_level`` on."""
        levels = {lvl + 1 for lvl in sinkhorn_level_set(self.sinkhorn_levels, self.num_levels)}
        if self.id_sinkhorn_from_level:
            levels |= set(range(self.id_sinkhorn_from_level, self.num_levels + 1))
        return sorted(levels)

    @property
    def codebook_sizes(self) -> list[int]:
        """Codes per level as a list (expands an int ``codebook_size``)."""
        if isinstance(self.codebook_size, int):
            return [self.codebook_size] * self.num_levels
        return list(self.codebook_size)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TokenizerConfig:
        """Build from a mapping (e.g. a RecBole config section), ignoring keys that are not fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class FitResult:
    """Output of :func:`fit_tokenizer`.

    ``history`` maps loss names (``total``, ``recon``, ``quant`` and, when active, ``cf``,
    ``div``) to one batch-size-weighted mean per epoch; ``restarted_codes[e]`` is the number of
    dead codes (all levels) moved back onto the data after epoch ``e``; ``epoch_seconds`` /
    ``epoch_cpu_seconds`` time each epoch (CPU time is what a shared machine cannot inflate,
    but it adds up all threads of this process). ``items_per_second`` counts training
    items processed per second of the epoch loop only; ``fit_seconds`` is the wall time of the
    whole call (k-means init and final encoding included). ``explained_variance`` is the share
    of the input embeddings' variance that the decoder reconstructs from the final codes alone
    (:func:`~.report.explained_variance`): what the IDs keep of the item text.
    """

    model: RQVAE
    codes: np.ndarray  # [n, L] int64
    history: dict[str, list[float]] = field(default_factory=dict)
    restarted_codes: list[int] = field(default_factory=list)  # dead codes restarted after each epoch
    epoch_seconds: list[float] = field(default_factory=list)  # wall time of each epoch
    epoch_cpu_seconds: list[float] = field(default_factory=list)  # CPU time of each epoch (this process)
    fit_seconds: float = 0.0
    items_per_second: float = 0.0
    config: TokenizerConfig | None = None
    explained_variance: float = float("nan")  # of the inputs, by the decoded final codes


def _check_matrix(a: Any, name: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D [n_items, dim] array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} must be a float array, got dtype {a.dtype}; cast it with .astype(np.float32)")
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).sum())
        raise ValueError(f"{name} has NaN/inf in {bad} row(s); fix or drop those items before tokenizing")
    return np.ascontiguousarray(a, dtype=np.float32)


def validate_inputs(
    embeddings: np.ndarray, cf_embeddings: np.ndarray | None, cfg: TokenizerConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """Check shapes/dtypes/finiteness; return float32 contiguous copies (CF only when used)."""
    emb = _check_matrix(embeddings, "embeddings")
    if emb.shape[0] < 2:
        raise ValueError(f"embeddings has {emb.shape[0]} row; need at least 2 items to fit a tokenizer")
    cf = None
    if cf_embeddings is not None:
        cf = _check_matrix(cf_embeddings, "cf_embeddings")
        if cf.shape[0] != emb.shape[0]:
            raise ValueError(
                f"cf_embeddings has {cf.shape[0]} rows but embeddings has {emb.shape[0]}; both must be aligned item by item"
            )
    if cfg.alpha > 0 and cf is None:
        raise ValueError("alpha > 0 (LETTER's CF loss) needs cf_embeddings; pass them or set alpha=0 for a plain RQ-VAE")
    return emb, (cf if cfg.alpha > 0 else None)


def build_model(cfg: TokenizerConfig, in_dim: int, cf_dim: int | None = None) -> RQVAE:
    """Construct the :class:`RQVAE` described by ``cfg`` (uses the global torch RNG for weights)."""
    return RQVAE(
        in_dim=in_dim,
        hidden_dims=cfg.hidden_dims,
        code_dim=cfg.code_dim,
        num_levels=cfg.num_levels,
        codebook_size=cfg.codebook_sizes,
        dropout=cfg.dropout,
        batchnorm=cfg.batchnorm,
        commitment_beta=cfg.commitment_beta,
        cf_dim=cf_dim,
        sinkhorn_levels=cfg.sinkhorn_levels,
        sinkhorn_epsilon=cfg.sinkhorn_epsilon,
        sinkhorn_iters=cfg.sinkhorn_iters,
        id_sinkhorn_levels=cfg.id_sinkhorn_levels,
    )


def reconstruction_normaliser(x: torch.Tensor, recon_scale: str) -> float:
    """What the reconstruction MSE is divided by during training.

    ``variance``: the inputs' mean per-dimension variance, so the term equals the share of
    the input variance the tokenizer fails to reconstruct (``1 - explained variance``) whatever
    the embedding's scale. ``none``: 1, the released code's raw MSE -- whose size then depends
    on the text encoder (unit-norm 384-d MiniLM rows give a raw MSE ~500x smaller than that
    share, so the quantiser and CF terms drown it).
    """
    if recon_scale == "none":
        return 1.0
    var = float(x.var(dim=0, unbiased=False).mean())
    if not var > 0:
        raise ValueError("recon_scale='variance' needs inputs that vary; every item embedding is identical")
    return var


@torch.no_grad()
def _encode_all(model: RQVAE, x: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([model.encode(part) for part in torch.split(x, chunk)], dim=0)


@torch.no_grad()
def _codes_for(model: RQVAE, x: torch.Tensor, chunk: int, use_sinkhorn: bool) -> torch.Tensor:
    """Semantic IDs for all rows of ``x`` (Sinkhorn, when used, on ``model.id_sinkhorn_levels``)."""
    """Codes for all rows of ``x``; Sinkhorn (when used) sees the whole set at once."""
    was_training = model.training
    model.eval()
    try:
        z = _encode_all(model, x, chunk)
        if use_sinkhorn and model.id_sinkhorn_levels:
            return model.quantize(z, True, model.id_sinkhorn_levels)[1]
        return torch.cat([model.quantize(part, use_sinkhorn=False)[1] for part in torch.split(z, chunk)], dim=0)
    finally:
        model.train(was_training)


def _div_clusters(model: RQVAE, k: int, gen: torch.Generator) -> list[torch.Tensor]:
    return [balanced_kmeans(book.detach(), k, seed=gen).to(book.device) for book in model.codebooks]


def _cf_side(out: RQVAEOutput, cf_levels: int) -> torch.Tensor:
    """What the CF contrast sees: the whole quantised latent ``z_q`` (``cf_levels`` 0, released
    code) or the sum of the first ``cf_levels`` codes, straight-through to the encoder.

    Contrasting only the leading codes asks for CF structure where the first-level IDs are
    decided and leaves the within-code residual to the text. Measured (seed 2024, README):
    ml-100k gains on both CF lift and explained variance, ml-1m's lift halves, so it is an
    option, not the default."""
    if cf_levels == 0 or cf_levels == out.quantized.shape[1]:
        return out.z_q
    head = out.quantized[:, :cf_levels].sum(dim=1)
    return out.z + (head - out.z).detach()


def _cf_loss(z_q: torch.Tensor, cf: torch.Tensor, cfg: TokenizerConfig) -> torch.Tensor:
    """L_CF on cosine (default) or raw dot-product similarities, see ``TokenizerConfig``."""
    if cfg.cf_similarity == "cosine":
        z_q, cf = F.normalize(z_q, dim=1), F.normalize(cf, dim=1)
    return cf_contrastive_loss(z_q, cf, cfg.cf_temperature)


@torch.no_grad()
def _restart_dead_codes(
    model: RQVAE, x: torch.Tensor, used: list[torch.Tensor], optimizer: torch.optim.Optimizer, cfg: TokenizerConfig,
    gen: torch.Generator,
) -> int:
    """Restart the codes no item used this epoch; their stale Adam moments are cleared too."""
    if all(bool(u.all()) for u in used):
        return 0
    was_training = model.training
    model.eval()
    try:
        restarted = model.restart_dead_codes(_encode_all(model, x, cfg.encode_batch_size), used, gen)
    finally:
        model.train(was_training)
    for book, rows in zip(model.codebooks, restarted):
        state = optimizer.state.get(book, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in state:
                state[name][rows] = 0.0
    return int(sum(r.numel() for r in restarted))


def fit_tokenizer(
    embeddings: np.ndarray,
    cf_embeddings: np.ndarray | None,
    cfg: TokenizerConfig,
    progress: bool = True,
) -> FitResult:
    """Train the tokenizer on ``embeddings [n, d]`` (+ aligned ``cf_embeddings [n, d_cf]``).

    Steps: seed everything from ``cfg.seed`` (inside a forked RNG, so the caller's global RNG is
    untouched); build the model; k-means-initialise the codebooks on all encoder outputs; train
    with AdamW for ``cfg.epochs``, moving codes that no item used during an epoch back onto the
    data every ``cfg.restart_dead_codes_every`` epochs; assign final codes in eval mode over the
    whole catalogue (Sinkhorn on the last level if enabled). Same seed and inputs give identical codes.
    Codes are *not* de-duplicated here -- collision resolution is a separate step.
    """
    t0 = time.perf_counter()
    emb, cf = validate_inputs(embeddings, cf_embeddings, cfg)
    device = torch.device(cfg.device)
    n = emb.shape[0]
    use_cf = cfg.alpha > 0
    use_div = cfg.beta > 0
    if cfg.kmeans_init and n < max(cfg.codebook_sizes):
        warnings.warn(
            f"{n} items but {max(cfg.codebook_sizes)} codes per level: some codes will duplicate others and stay unused",
            stacklevel=2,
        )
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(cfg.seed)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(cfg.seed)
        x = torch.from_numpy(emb).to(device)
        cf_t = torch.from_numpy(cf).to(device) if use_cf else None
        model = build_model(cfg, emb.shape[1], cf.shape[1] if use_cf else None).to(device)

        if cfg.kmeans_init:
            model.eval()
            model.init_codebooks(_encode_all(model, x, cfg.encode_batch_size), iters=cfg.kmeans_iters, seed=gen)
        else:
            model.codebooks_initialised.fill_(True)

        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        names = ["total", "recon", "quant"] + (["cf"] if use_cf else []) + (["div"] if use_div else [])
        history: dict[str, list[float]] = {k: [] for k in names}
        n_batches = max(1, math.ceil(n / cfg.batch_size))
        recon_norm = reconstruction_normaliser(x, cfg.recon_scale)
        clusters: list[torch.Tensor] = []
        restarted_codes: list[int] = []
        # codes that got an item since the last restart check, per level
        used = [torch.zeros(book.shape[0], dtype=torch.bool, device=device) for book in model.codebooks]
        train_seconds = 0.0
        # disable=None: no bar when stderr is not a terminal (logs, `make demo | tee`), where tqdm
        # would write one refresh line per update.
        bar = tqdm(range(cfg.epochs), desc="tokenizer", disable=None if progress else True, leave=False)
        epoch_seconds: list[float] = []
        epoch_cpu_seconds: list[float] = []
        for epoch in bar:
            te, tc = time.perf_counter(), time.process_time()
            if use_div and epoch % cfg.div_refresh_every == 0:
                clusters = _div_clusters(model, cfg.n_div_clusters, gen)
            model.train()
            perm = torch.randperm(n, generator=gen).to(device)
            sums = torch.zeros(len(names), device=device)
            # near-equal batch sizes: no tiny last batch to weaken in-batch negatives or Sinkhorn
            for idx in torch.tensor_split(perm, n_batches):
                out = model(x[idx])
                parts = [out.recon_loss, out.quant_loss]
                loss = out.recon_loss / recon_norm + out.quant_loss
                if use_cf:
                    cf_loss = _cf_loss(_cf_side(out, cfg.cf_levels), model.project_cf(cf_t[idx]), cfg)
                    loss = loss + cfg.alpha * cf_loss
                    parts.append(cf_loss)
                if use_div:
                    div = torch.stack(
                        [
                            diversity_loss(book, out.codes[:, lvl], clusters[lvl], gen, cfg.div_temperature)
                            for lvl, book in enumerate(model.codebooks)
                        ]
                    ).mean()
                    loss = loss + cfg.beta * div
                    parts.append(div)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums += torch.stack([loss.detach(), *[p.detach() for p in parts]]) * idx.numel()
                for lvl, mask in enumerate(used):
                    mask[out.codes[:, lvl]] = True
            restart = cfg.restart_dead_codes_every > 0 and (epoch + 1) % cfg.restart_dead_codes_every == 0
            n_restarted = 0
            if restart and epoch < cfg.epochs - 1:  # after the last epoch a restarted code would never train
                n_restarted = _restart_dead_codes(model, x, used, optimizer, cfg, gen)
            restarted_codes.append(n_restarted)
            if restart:
                for mask in used:
                    mask.zero_()
            means = (sums / n).tolist()
            if not math.isfinite(means[0]):
                raise FloatingPointError(
                    f"tokenizer loss became {means[0]} at epoch {epoch}; lower lr or check the input scale"
                )
            for k, v in zip(names, means):
                history[k].append(v)
            epoch_seconds.append(time.perf_counter() - te)
            epoch_cpu_seconds.append(time.process_time() - tc)
            train_seconds += epoch_seconds[-1]
            bar.set_postfix(loss=f"{means[0]:.4f}", recon=f"{means[1]:.4f}", restarted=n_restarted)
        bar.close()

        codes = _codes_for(model, x, cfg.encode_batch_size, True)
        x_hat = decode_codes(model, codes, cfg.encode_batch_size)
    model.eval()
    items_per_second = n * cfg.epochs / train_seconds if train_seconds > 0 else float("nan")
    return FitResult(
        model=model,
        codes=codes.cpu().numpy().astype(np.int64),
        history=history,
        restarted_codes=restarted_codes,
        epoch_seconds=epoch_seconds,
        epoch_cpu_seconds=epoch_cpu_seconds,
        fit_seconds=time.perf_counter() - t0,
        items_per_second=items_per_second,
        config=cfg,
        explained_variance=explained_variance(emb, x_hat.cpu().numpy()),
    )


@torch.no_grad()
def decode_codes(model: RQVAE, codes: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Decoder output for code tuples ``[n, L]``: what the semantic IDs alone can reconstruct."""
    was_training = model.training
    model.eval()
    try:
        parts = []
        for part in torch.split(codes, chunk):
            z_q = sum(book[part[:, lvl]] for lvl, book in enumerate(model.codebooks))
            parts.append(model.decoder(z_q))
        return torch.cat(parts, dim=0)
    finally:
        model.train(was_training)


def encode_codes(
    model: RQVAE, embeddings: np.ndarray, cfg: TokenizerConfig, use_sinkhorn: bool | None = None
) -> np.ndarray:
    """Assign codes ``[n, L]`` (int64) to items with a trained model, without refitting.

    Meant for cold-start items. ``use_sinkhorn=None`` follows ``cfg.id_sinkhorn_levels``; note
    Sinkhorn balances the last level *across the rows you pass*, which is what you want for a
    whole catalogue (it reproduces ``FitResult.codes``) but not for a handful of new items --
    pass ``use_sinkhorn=False`` there to get each item's nearest codes.
    """
    emb = _check_matrix(embeddings, "embeddings")
    if emb.shape[1] != model.in_dim:
        raise ValueError(f"embeddings have dim {emb.shape[1]} but the tokenizer was trained on dim {model.in_dim}")
    device = next(model.parameters()).device
    use_sk = use_sinkhorn is not False
    x = torch.from_numpy(emb).to(device)
    return _codes_for(model, x, cfg.encode_batch_size, use_sk).cpu().numpy().astype(np.int64)
