"""Tests of the pure-torch tokenizer core: k-means, RQ-VAE, LETTER losses and the fit loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recbole_letter.tokenization import fit as trainer_mod
from recbole_letter.tokenization.kmeans import balanced_kmeans, kmeans, sinkhorn_assign, squared_distances
from recbole_letter.tokenization.losses import (
    cf_contrastive_loss,
    diversity_loss,
    quantization_loss,
    reconstruction_loss,
    sample_cluster_positives,
)
from recbole_letter.tokenization.rqvae import RQVAE
from recbole_letter.tokenization.fit import TokenizerConfig, encode_codes, fit_tokenizer

torch.set_num_threads(1)


def tiny_cfg(**kw) -> TokenizerConfig:
    base = dict(
        hidden_dims=(16,),
        code_dim=8,
        num_levels=3,
        codebook_size=8,
        n_div_clusters=2,
        div_refresh_every=2,
        epochs=4,
        batch_size=64,
        kmeans_iters=10,
        seed=7,
    )
    base.update(kw)
    return TokenizerConfig(**base)


def tiny_data(n: int = 150, d: int = 12, d_cf: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((n, d_cf)).astype(np.float32)


# ---------------------------------------------------------------- individual loss terms


def test_reconstruction_loss_is_elementwise_mse() -> None:
    x = torch.zeros(2, 2)
    recon = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert reconstruction_loss(recon, x).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_quantization_loss_values_and_gradients() -> None:
    r = torch.tensor([[1.0, 0.0], [0.0, 3.0]], requires_grad=True)
    e = torch.tensor([[0.0, 0.0], [0.0, 1.0]], requires_grad=True)
    total, cb, cm = quantization_loss(r, e, commitment_beta=0.25)
    mse = (1 + 0 + 0 + 4) / 4  # element-wise mean of (r - e)^2
    assert cb.item() == pytest.approx(mse)
    assert cm.item() == pytest.approx(mse)
    assert total.item() == pytest.approx(1.25 * mse)
    total.backward()
    # codebook term moves e only (2(e-r)/N), commitment term moves r only (beta * 2(r-e)/N)
    assert torch.allclose(e.grad, 2 * (e - r).detach() / 4)
    assert torch.allclose(r.grad, 0.25 * 2 * (r - e).detach() / 4)


def test_residual_quantizer_with_hand_set_codebooks() -> None:
    model = RQVAE(in_dim=2, hidden_dims=(), code_dim=2, num_levels=2, codebook_size=2, sinkhorn_levels=())
    with torch.no_grad():
        model.codebooks[0].copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
        model.codebooks[1].copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
    model.codebooks_initialised.fill_(True)
    z = torch.tensor([[1.8, 0.5], [0.1, -0.7]])
    z_q, codes, residuals, quantized, cb, cm = model.quantize(z)
    # row 0: level0 -> [2,0] (code 1), residual [-0.2,0.5] -> [0,1] (code 0)
    # row 1: level0 -> [0,0] (code 0), residual [0.1,-0.7] -> [0,-1] (code 1)
    assert codes.tolist() == [[1, 0], [0, 1]]
    assert torch.allclose(z_q, torch.tensor([[2.0, 1.0], [0.0, -1.0]]))
    assert torch.allclose(residuals[:, 1], torch.tensor([[-0.2, 0.5], [0.1, -0.7]]))
    level0 = ((0.2**2 + 0.5**2) + (0.1**2 + 0.7**2)) / 4
    level1 = ((0.2**2 + 0.5**2) + (0.1**2 + 0.3**2)) / 4
    assert cb.item() == pytest.approx((level0 + level1) / 2, rel=1e-5)
    assert cm.item() == pytest.approx((level0 + level1) / 2, rel=1e-5)


def test_cf_contrastive_loss_matches_hand_infonce() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    h = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.5]])
    t = 0.5
    # dot products <z_i, h_j>
    dots = [[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [2.0, 1.0, -0.5]]
    expected = -sum(
        math.log(math.exp(dots[i][i] / t) / sum(math.exp(dots[i][j] / t) for j in range(3))) for i in range(3)
    ) / 3
    assert cf_contrastive_loss(z, h, temperature=t).item() == pytest.approx(expected, rel=1e-6)


def test_cf_contrastive_loss_rejects_mismatched_dims() -> None:
    with pytest.raises(ValueError, match="project"):
        cf_contrastive_loss(torch.zeros(3, 4), torch.zeros(3, 5))


def test_diversity_loss_matches_hand_computation() -> None:
    book = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [-1.0, 0.0]])
    clusters = torch.tensor([0, 0, 1, 1])
    codes = torch.tensor([0, 2])
    positives = torch.tensor([1, 3])
    dots = (book @ book.t()).tolist()

    def term(c: int, p: int) -> float:
        others = [j for j in range(4) if j != c]  # the item's own code is excluded
        return -math.log(math.exp(dots[c][p]) / sum(math.exp(dots[c][j]) for j in others))

    expected = (term(0, 1) + term(2, 3)) / 2
    got = diversity_loss(book, codes, clusters, positives=positives)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_diversity_positives_are_other_members_of_the_cluster() -> None:
    clusters = torch.tensor([2, 0, 1, 0, 2, 0, 1, 2, 1])  # three clusters of three, interleaved
    codes = torch.tensor([0, 1, 2, 3] * 500)
    gen = torch.Generator().manual_seed(0)
    pos, valid = sample_cluster_positives(codes, clusters, gen)
    assert bool(valid.all())
    assert torch.equal(clusters[pos], clusters[codes])
    assert not bool((pos == codes).any())
    # each of the two other members is drawn about half of the time
    frac = (pos[codes == 1] == 3).float().mean().item()
    assert 0.4 < frac < 0.6


def test_diversity_singleton_clusters_have_no_positive() -> None:
    clusters = torch.tensor([0, 1, 1])
    pos, valid = sample_cluster_positives(torch.tensor([0, 1, 2]), clusters, torch.Generator().manual_seed(0))
    assert valid.tolist() == [False, True, True]
    assert pos[1:].tolist() == [2, 1]


# ---------------------------------------------------------------- model mechanics


def test_straight_through_gradient_reaches_encoder() -> None:
    torch.manual_seed(0)
    model = RQVAE(in_dim=6, hidden_dims=(5,), code_dim=4, num_levels=2, codebook_size=4, sinkhorn_levels=())
    x = torch.randn(20, 6)
    model.init_codebooks(model.encode(x).detach(), iters=5, seed=0)
    out = model(x)
    (dz,) = torch.autograd.grad(out.z_q.sum(), out.z, retain_graph=True)
    assert torch.equal(dz, torch.ones_like(dz))  # identity gradient through the quantiser
    assert torch.allclose(out.z_q, out.quantized.sum(dim=1), atol=1e-6)  # value is the sum of codes
    out.recon_loss.backward()
    assert model.encoder[0].weight.grad is not None
    assert model.encoder[0].weight.grad.abs().sum() > 0


def test_training_without_codebook_init_fails_clearly() -> None:
    model = RQVAE(in_dim=4, hidden_dims=(), code_dim=2, num_levels=1, codebook_size=2)
    with pytest.raises(RuntimeError, match="init_codebooks"):
        model(torch.randn(3, 4))


def test_codebook_size_list_must_match_levels() -> None:
    with pytest.raises(ValueError, match="one size per level"):
        RQVAE(in_dim=4, num_levels=3, codebook_size=[4, 4])


# ---------------------------------------------------------------- clustering


def _blobs(n_per: int, centers: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = centers.repeat_interleave(n_per, dim=0)
    return pts + noise * torch.randn(pts.shape, generator=g)


def test_kmeans_recovers_separated_clusters() -> None:
    centers = 10.0 * torch.randn(8, 6, generator=torch.Generator().manual_seed(9))
    x = _blobs(30, centers, 0.1, seed=1)
    found, labels = kmeans(x, 8, iters=50, seed=0)
    nearest = squared_distances(centers, found).min(dim=1).values
    assert nearest.max() < 0.05  # every true centre has a fitted centre on it
    assert torch.bincount(labels, minlength=8).tolist() == [30] * 8


def test_kmeans_is_deterministic_given_seed() -> None:
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(3))
    a, _ = kmeans(x, 7, seed=11)
    b, _ = kmeans(x, 7, seed=11)
    c, _ = kmeans(x, 7, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_codebook_init_places_codes_on_data() -> None:
    torch.manual_seed(0)
    model = RQVAE(in_dim=6, hidden_dims=(), code_dim=6, num_levels=2, codebook_size=8, sinkhorn_levels=())
    x = _blobs(25, 6.0 * torch.randn(8, 6, generator=torch.Generator().manual_seed(5)), 0.05, seed=2)
    z = model.encode(x).detach()
    model.init_codebooks(z, iters=50, seed=0)
    err_level0 = squared_distances(z, model.codebooks[0].detach()).min(dim=1).values.mean()
    spread = (z - z.mean(dim=0)).pow(2).sum(dim=1).mean()
    assert err_level0 < 0.01 * spread
    model.eval()
    out = model(x)
    assert out.quant_loss.item() < 0.01 * spread.item()


@settings(max_examples=15, deadline=None)
@given(n=st.integers(min_value=10, max_value=120), k=st.integers(min_value=1, max_value=10), seed=st.integers(0, 99))
def test_balanced_kmeans_sizes_within_one(n: int, k: int, seed: int) -> None:
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed)) * torch.tensor([5.0, 1.0, 0.2])
    labels = balanced_kmeans(x, k, seed=seed)
    sizes = torch.bincount(labels, minlength=k)
    assert sizes.min() >= n // k and sizes.max() <= -(-n // k)


def test_balanced_kmeans_keeps_clusters_when_they_are_balanced() -> None:
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = _blobs(16, centers, 0.3, seed=4)
    labels = balanced_kmeans(x, 4, seed=0)
    truth = torch.arange(4).repeat_interleave(16)
    # same partition up to renaming: each true blob maps to one label
    for b in range(4):
        assert labels[truth == b].unique().numel() == 1


def test_balanced_kmeans_needs_enough_points() -> None:
    with pytest.raises(ValueError, match="at least k"):
        balanced_kmeans(torch.randn(3, 2), 5)


def _reference_sinkhorn(d: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """Plain multiplicative Sinkhorn as written in the LETTER/LC-Rec code (no stabilisation)."""
    d = d.double()
    mid = (d.max() + d.min()) / 2
    d = (d - mid) / (d.max() - mid + 1e-5)
    q = torch.exp(-d / eps)
    q /= q.sum()
    n, k = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True) * n
        q /= q.sum(dim=0, keepdim=True) * k
    return q.argmax(dim=1)


@pytest.mark.parametrize("eps", [0.05, 0.003, 0.002])  # 0.002 exercises the log-domain path
def test_sinkhorn_matches_reference(eps: float) -> None:
    d = torch.rand(300, 32, generator=torch.Generator().manual_seed(0)) ** 2
    assert torch.equal(sinkhorn_assign(d, eps, 50), _reference_sinkhorn(d, eps, 50))


def test_sinkhorn_spreads_items_that_argmin_would_pile_up() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])
    x = 0.3 * torch.randn(200, 2, generator=g)  # every point is nearest to code 0
    d = squared_distances(x, codes)
    assert d.argmin(dim=1).unique().numel() == 1
    counts = torch.bincount(sinkhorn_assign(d, 0.003, 50), minlength=4)
    assert counts.min() >= 20


# ---------------------------------------------------------------- fit loop


def test_fit_is_deterministic_and_seed_dependent() -> None:
    emb, cf = tiny_data()
    cfg = tiny_cfg(alpha=0.05, beta=1e-3)
    a = fit_tokenizer(emb, cf, cfg, progress=False)
    b = fit_tokenizer(emb, cf, cfg, progress=False)
    assert a.codes.dtype == np.int64 and a.codes.shape == (150, 3)
    assert np.array_equal(a.codes, b.codes)
    assert a.history == b.history
    assert set(a.history) == {"total", "recon", "quant", "cf", "div"}
    assert all(len(v) == cfg.epochs for v in a.history.values())
    assert a.items_per_second > 0 and a.fit_seconds > 0
    c = fit_tokenizer(emb, cf, tiny_cfg(alpha=0.05, beta=1e-3, seed=8), progress=False)
    assert not np.array_equal(a.codes, c.codes)


def test_fit_does_not_touch_global_rng() -> None:
    emb, cf = tiny_data(n=60)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_tokenizer(emb, None, tiny_cfg(alpha=0.0, beta=0.0, epochs=1), progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_plain_rqvae_needs_no_cf_and_skips_letter_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("LETTER term computed although alpha = beta = 0")

    monkeypatch.setattr(trainer_mod, "cf_contrastive_loss", boom)
    monkeypatch.setattr(trainer_mod, "diversity_loss", boom)
    monkeypatch.setattr(trainer_mod, "balanced_kmeans", boom)
    emb, _ = tiny_data()
    res = fit_tokenizer(emb, None, tiny_cfg(alpha=0.0, beta=0.0, recon_scale="none"), progress=False)
    assert set(res.history) == {"total", "recon", "quant"}
    assert res.model.cf_proj is None
    assert np.allclose(np.array(res.history["total"]), np.array(res.history["recon"]) + np.array(res.history["quant"]))


def test_fit_with_batchnorm_dropout_and_per_level_sizes() -> None:
    emb, cf = tiny_data()
    cfg = tiny_cfg(batchnorm=True, dropout=0.1, codebook_size=(8, 6, 4), alpha=0.05, beta=1e-3, epochs=2)
    res = fit_tokenizer(emb, cf, cfg, progress=False)
    assert [book.shape[0] for book in res.model.codebooks] == [8, 6, 4]
    assert (res.codes.max(axis=0) < np.array([8, 6, 4])).all()
    assert all(math.isfinite(v) for v in res.history["total"])


def test_cf_projection_is_learned_when_dims_differ() -> None:
    emb, cf = tiny_data(d_cf=5)
    cfg = tiny_cfg(alpha=0.5, beta=0.0)
    res = fit_tokenizer(emb, cf, cfg, progress=False)
    assert res.model.cf_proj is not None and res.model.cf_proj.weight.shape == (cfg.code_dim, 5)
    torch.manual_seed(cfg.seed)  # replay construction to get the initial projection
    fresh = trainer_mod.build_model(cfg, emb.shape[1], 5)
    assert not torch.allclose(fresh.cf_proj.weight, res.model.cf_proj.weight)


def test_encode_codes_reproduces_fit_codes_and_handles_new_items() -> None:
    emb, cf = tiny_data()
    cfg = tiny_cfg(alpha=0.05, beta=1e-3)
    res = fit_tokenizer(emb, cf, cfg, progress=False)
    assert np.array_equal(encode_codes(res.model, emb, cfg), res.codes)
    new = encode_codes(res.model, emb[:3] + 0.01, cfg, use_sinkhorn=False)
    assert new.shape == (3, cfg.num_levels) and new.dtype == np.int64
    assert (new >= 0).all() and (new < 8).all()
    with pytest.raises(ValueError, match="trained on dim 12"):
        encode_codes(res.model, emb[:, :5], cfg)


@pytest.mark.parametrize(
    "emb, cf, cfg_kw, err, match",
    [
        (np.full((5, 4), np.nan, np.float32), None, {}, ValueError, "NaN"),
        (np.zeros(5, np.float32), None, {}, ValueError, "2-D"),
        (np.zeros((5, 4), np.int64), None, {}, TypeError, "float"),
        (np.zeros((5, 4), np.float32), np.zeros((4, 3), np.float32), {"alpha": 0.1}, ValueError, "rows"),
        (np.zeros((5, 4), np.float32), np.array([[np.inf] * 3] * 5, np.float32), {"alpha": 0.1}, ValueError, "NaN/inf"),
        (np.zeros((5, 4), np.float32), None, {"alpha": 0.1}, ValueError, "cf_embeddings"),
        ([[0.0] * 4] * 5, None, {}, TypeError, "numpy"),
    ],
)
def test_input_validation(emb, cf, cfg_kw, err, match) -> None:
    cfg = tiny_cfg(**{"alpha": 0.0, "beta": 0.0, **cfg_kw})
    with pytest.raises(err, match=match):
        fit_tokenizer(emb, cf, cfg, progress=False)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="lr"):
        TokenizerConfig(lr=0)
    with pytest.raises(ValueError, match="n_div_clusters"):
        TokenizerConfig(codebook_size=8, n_div_clusters=10)
    with pytest.raises(ValueError, match="one size per level"):
        TokenizerConfig(num_levels=2, codebook_size=(8, 8, 8))
    cfg = TokenizerConfig.from_dict({"epochs": 3, "not_a_field": 1})
    assert cfg.epochs == 3


# ---------------------------------------------------------------- does L_CF do its job?


def _cf_share_of_first_code(codes: np.ndarray, cf_cluster: np.ndarray) -> float:
    """Fraction of (item, CF-neighbour) pairs -- same CF cluster -- whose first codes agree."""
    same = cf_cluster[:, None] == cf_cluster[None, :]
    np.fill_diagonal(same, False)
    share = codes[:, None, 0] == codes[None, :, 0]
    return float((share & same).sum() / same.sum())


def test_cf_loss_groups_cf_neighbours_under_first_code() -> None:
    """Random text embeddings carry no CF signal, so without L_CF first codes ignore the 8 CF
    groups (share ~ 1/16 = chance); L_CF must pull CF-neighbours onto shared first codes.

    Measured on seeds 0-2: alpha 0 -> 0.063-0.067, default alpha 0.02 -> 0.085-0.101,
    alpha 0.5 -> 0.31-0.42. The default's effect is small here because the text is pure noise,
    so reconstruction competes with L_CF for every bit of the latent.
    """
    rng = np.random.default_rng(0)
    n = 400
    text = rng.standard_normal((n, 64)).astype(np.float32)
    group = rng.integers(0, 8, n)
    cf = (rng.standard_normal((8, 16))[group] + 0.3 * rng.standard_normal((n, 16))).astype(np.float32)
    common = dict(
        hidden_dims=(64, 32), code_dim=16, num_levels=2, codebook_size=16, n_div_clusters=4,
        beta=0.0, epochs=100, batch_size=128, kmeans_iters=20, seed=0,
    )
    shares = {}
    for alpha in (0.0, 0.02, 0.5):
        codes = fit_tokenizer(text, cf, TokenizerConfig(alpha=alpha, **common), progress=False).codes
        shares[alpha] = _cf_share_of_first_code(codes, group)
    assert shares[0.0] < 0.1  # chance level for 16 first-level codes is 0.0625
    assert shares[0.02] > shares[0.0]
    assert shares[0.5] > 2 * shares[0.0]


# ---------------------------------------------------------------- issue 12 options


def test_sinkhorn_levels_parse_and_fail_clearly() -> None:
    from recbole_letter.tokenization.rqvae import sinkhorn_level_set

    assert sinkhorn_level_set((-1,), 4) == {3}
    assert sinkhorn_level_set([2, 3, -1], 4) == {1, 2, 3}
    assert sinkhorn_level_set((), 4) == frozenset()
    for bad in ([0], [5], [-5]):
        with pytest.raises(ValueError, match="does not exist with num_levels=4"):
            sinkhorn_level_set(bad, 4)
    with pytest.raises(TypeError, match="list of level numbers"):
        sinkhorn_level_set("4", 4)
    with pytest.raises(ValueError, match="num_levels=3"):
        TokenizerConfig(num_levels=3, codebook_size=8, n_div_clusters=2, sinkhorn_levels=[4])
    assert TokenizerConfig(sinkhorn_levels=[2, 3]).sinkhorn_levels == (2, 3)  # YAML lists become tuples


def test_sinkhorn_on_several_levels_balances_each_of_them() -> None:
    # 64 points all nearest to code 0 at both levels: argmin piles them up, Sinkhorn spreads them
    model = RQVAE(in_dim=2, hidden_dims=(), code_dim=2, num_levels=2, codebook_size=4, sinkhorn_levels=[1, 2])
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.eye(2))
        for book in model.codebooks:
            book.copy_(torch.tensor([[0.0, 0.0], [9.0, 0.0], [0.0, 9.0], [9.0, 9.0]]))
    model.codebooks_initialised.fill_(True)
    x = 0.1 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    nearest = model.get_codes(x, use_sinkhorn=False)
    assert (nearest == 0).all()
    balanced = model.get_codes(x)
    for lvl in range(2):
        assert torch.bincount(balanced[:, lvl], minlength=4).min() >= 10
    only_last = RQVAE(in_dim=2, hidden_dims=(), code_dim=2, num_levels=2, codebook_size=4)
    only_last.load_state_dict(model.state_dict())
    assert (only_last.get_codes(x)[:, 0] == 0).all()  # default: Sinkhorn on the last level only


def test_recon_scale_divides_by_input_variance() -> None:
    x = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # per-dim variances 1 and 4
    assert trainer_mod.reconstruction_normaliser(x, "variance") == pytest.approx(2.5)
    assert trainer_mod.reconstruction_normaliser(x, "none") == 1.0
    with pytest.raises(ValueError, match="vary"):
        trainer_mod.reconstruction_normaliser(torch.ones(3, 2), "variance")
    with pytest.raises(ValueError, match="recon_scale must be one of"):
        TokenizerConfig(recon_scale="std")
    # the training loss uses recon / variance; the history keeps the raw MSE next to it
    emb, _ = tiny_data(n=80)
    res = fit_tokenizer(emb, None, tiny_cfg(alpha=0.0, beta=0.0, recon_scale="variance", epochs=2), progress=False)
    var = float(emb.var(axis=0).mean())
    for total, recon, quant in zip(res.history["total"], res.history["recon"], res.history["quant"]):
        assert total == pytest.approx(recon / var + quant, rel=1e-4)


def test_fit_reports_explained_variance_of_the_decoded_codes() -> None:
    from recbole_letter.tokenization.report import explained_variance

    emb, cf = tiny_data(n=120)
    res = fit_tokenizer(emb, cf, tiny_cfg(alpha=0.05, beta=1e-3), progress=False)
    x_hat = trainer_mod.decode_codes(res.model, torch.from_numpy(res.codes)).numpy()
    assert res.explained_variance == pytest.approx(explained_variance(emb, x_hat))
    assert res.explained_variance < 1.0 and np.isfinite(res.explained_variance)


def test_id_sinkhorn_levels_balance_final_ids_without_changing_training() -> None:
    from recbole_letter.tokenization.report import gini

    assert tiny_cfg(id_sinkhorn_from_level=2).id_sinkhorn_levels == [2, 3]
    assert tiny_cfg(id_sinkhorn_from_level=0).id_sinkhorn_levels == [3]  # the training levels only
    assert tiny_cfg(id_sinkhorn_from_level=0, sinkhorn_levels=()).id_sinkhorn_levels == []
    with pytest.raises(ValueError, match="id_sinkhorn_from_level=4"):
        tiny_cfg(id_sinkhorn_from_level=4)
    emb, cf = tiny_data(n=160)
    plain = fit_tokenizer(emb, cf, tiny_cfg(id_sinkhorn_from_level=0), progress=False)
    balanced = fit_tokenizer(emb, cf, tiny_cfg(id_sinkhorn_from_level=2), progress=False)
    assert plain.history == balanced.history  # same network: only the final assignment differs
    assert np.array_equal(plain.codes[:, 0], balanced.codes[:, 0])  # the first level is untouched
    assert gini(np.bincount(balanced.codes[:, 1], minlength=8)) < gini(np.bincount(plain.codes[:, 1], minlength=8))
    assert np.array_equal(encode_codes(balanced.model, emb, tiny_cfg(id_sinkhorn_from_level=2)), balanced.codes)


def _shipped_tokenizer_config(**tiny) -> TokenizerConfig:
    """``properties/model/LETTER.yaml`` as the tokenizer stage reads it, with tiny sizes."""
    from pathlib import Path

    import yaml

    import recbole_letter
    from recbole_letter.stages.item_tokenizer import CONFIG_KEYS

    yaml_path = Path(recbole_letter.__file__).parent / "properties" / "model" / "LETTER.yaml"
    shipped = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    values = {field: shipped[key] for key, field in CONFIG_KEYS.items() if key in shipped}
    values.update(tiny)
    return TokenizerConfig.from_dict(values)


def test_shipped_config_balances_every_deeper_level_of_the_final_ids() -> None:
    """Issue 12 regression guard: with the default LETTER.yaml, final IDs of levels 2..L stay
    near uniform even when every residual's nearest deeper code is the same one (the ml-1m
    collapse: one small-norm code took most items at level 3), while level 1 keeps its
    nearest (CF-aligned) codes."""
    from recbole_letter.tokenization.fit import build_model
    from recbole_letter.tokenization.report import gini

    cfg = _shipped_tokenizer_config(hidden_dims=(), code_dim=2, num_levels=4, codebook_size=4, n_div_clusters=2)
    assert cfg.id_sinkhorn_levels == [2, 3, 4]
    model = build_model(cfg, in_dim=2)
    far = torch.tensor([[0.0, 0.0], [9.0, 0.0], [0.0, 9.0], [9.0, 9.0]])
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.eye(2))
        model.encoder[0].bias.zero_()
        model.codebooks[0].copy_(torch.tensor([[-5.0, -5.0], [5.0, -5.0], [-5.0, 5.0], [5.0, 5.0]]))
        for book in model.codebooks[1:]:
            book.copy_(far)  # every small residual is nearest to code 0
    model.codebooks_initialised.fill_(True)
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-5.0, -5.0], [5.0, -5.0], [-5.0, 5.0], [5.0, 5.0]])
    x = (centres.repeat(40, 1) + 0.1 * torch.randn(160, 2, generator=gen)).numpy()

    codes = encode_codes(model, x, cfg)
    nearest = encode_codes(model, x, cfg, use_sinkhorn=False)
    assert np.array_equal(codes[:, 0], nearest[:, 0])  # level 1 untouched
    assert (nearest[:, 1:] == 0).all()  # without balancing, every deeper level collapses
    for lvl in range(1, 4):
        counts = np.bincount(codes[:, lvl], minlength=4)
        assert (counts > 0).all(), f"level {lvl + 1} leaves codes unused: {counts}"
        assert gini(counts) <= 0.35, f"level {lvl + 1} is skewed: {counts}"
    released = _shipped_tokenizer_config(hidden_dims=(), code_dim=2, num_levels=4, codebook_size=4,
                                         n_div_clusters=2, id_sinkhorn_from_level=0)
    model.id_sinkhorn_levels = frozenset(lvl - 1 for lvl in released.id_sinkhorn_levels)
    collapsed = encode_codes(model, x, released)
    assert (collapsed[:, 1:3] == 0).all()  # the released assignment: levels 2-3 pile onto one code


def test_cf_levels_contrasts_the_leading_codes_straight_through() -> None:
    from recbole_letter.tokenization.fit import _cf_side

    with pytest.raises(ValueError, match="cf_levels must be 0"):
        tiny_cfg(cf_levels=4)  # 3 levels
    model = RQVAE(in_dim=4, hidden_dims=(), code_dim=3, num_levels=3, codebook_size=5, sinkhorn_levels=())
    model.init_codebooks(model.encode(torch.randn(40, 4, generator=torch.Generator().manual_seed(1))).detach(), iters=3)
    out = model(torch.randn(6, 4, generator=torch.Generator().manual_seed(2)))
    assert _cf_side(out, 0) is out.z_q and _cf_side(out, 3) is out.z_q  # the whole latent (released)
    first = _cf_side(out, 1)
    assert torch.allclose(first, out.quantized[:, 0])  # value: the first-level code
    first.sum().backward()
    assert model.codebooks[0].grad is None  # straight-through: the gradient goes to the encoder
    assert model.encoder[0].weight.grad is not None and model.encoder[0].weight.grad.abs().sum() > 0
    # the option reaches training: a different CF loss, the same shapes and finite values
    emb, cf = tiny_data(n=120)
    whole = fit_tokenizer(emb, cf, tiny_cfg(alpha=0.1), progress=False)
    lead = fit_tokenizer(emb, cf, tiny_cfg(alpha=0.1, cf_levels=1), progress=False)
    assert whole.history["cf"] != lead.history["cf"]
    assert all(math.isfinite(v) for v in lead.history["cf"])
