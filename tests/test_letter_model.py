"""LETTER / RQVAE as RecBole models and the semantic-ID stage, end to end on a tiny dataset.

Item text goes through a registered fake encoder (a hash of the text -> a fixed random vector),
so nothing loads MiniLM; CF embeddings come from RecBole's real LightGCN trained for one epoch.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.data import create_dataset

from recbole_letter import compat
from recbole_letter.model.tiger import TIGER
from recbole_letter.quick_start import build_config, run_recbole_letter
from recbole_letter.stages import cf_embeddings as cf_module
from recbole_letter.stages import item_tokenizer as stage_module
from recbole_letter.stages import resolve_stages, text_embeddings
from recbole_letter.stages.item_tokenizer import load_or_fit_tokenizer, semantic_ids_for
from recbole_letter.tokenization.semantic_ids import SemanticIDTable, load_index_json

DATASET = "tiny"
N_ITEMS = 30
TEXT_DIM = 24
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Small enough to fit in well under a second; the same keys a user sets in LETTER.yaml.
TOKENIZER = {
    "item_tokenizer": "LETTER",  # which tokenizer semantic_ids_for fits (TIGER.yaml's key; LETTER.yaml lacks it)
    "tokenizer_epochs": 3,
    "codebook_size": 8,
    "num_levels": 3,
    "n_div_clusters": 2,
    "div_refresh_every": 2,
    "tokenizer_hidden_dims": [16],
    "code_dim": 8,
    "kmeans_iters": 10,
    "tokenizer_batch_size": 32,
    "cf_epochs": 1,
    "cf_config": {"embedding_size": 16, "train_batch_size": 256},
    "text_encoder": "fake-hash",
    "show_progress": False,
    "state": "ERROR",
}


class HashEncoder:
    """Deterministic stand-in for a sentence encoder: one fixed random vector per distinct text."""

    identity = f"fake-hash-{TEXT_DIM}"

    def encode(self, texts: list[str]) -> np.ndarray:
        seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little") for t in texts]
        return np.stack([np.random.default_rng(s).standard_normal(TEXT_DIM) for s in seeds]).astype(np.float32)


@pytest.fixture(autouse=True)
def _fake_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(text_embeddings.TEXT_ENCODERS, "fake-hash", lambda spec, settings: HashEncoder())


def write_items(folder: Path, n_items: int = N_ITEMS) -> None:
    genres = ["rock", "jazz", "folk", "pop"]
    lines = ["item_id:token\ttitle:token_seq\tgenre:token"]
    lines += [f"{i}\tItem number {i} {genres[i % 4]} edition\t{genres[i % 4]}" for i in range(1, n_items + 1)]
    (folder / f"{DATASET}.item").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture()
def tiny(tiny_seq_dataset, workdir: Path) -> dict:
    """Tiny dataset (.inter + .item) and a config dict for it; runs inside ``tmp_path``."""
    root = tiny_seq_dataset(DATASET, n_users=40, n_items=N_ITEMS, min_len=6, max_len=10)
    write_items(root / DATASET)
    return {"data_path": str(root), "checkpoint_dir": str(workdir / "saved"), **TOKENIZER}


def dataset_for(params: dict, model: str = "LETTER"):
    config, _ = build_config(model, DATASET, config_dict=params)
    return config, create_dataset(config)


def item_tokens(dataset) -> list[str]:
    return [str(t) for t in dataset.id2token(dataset.iid_field, np.arange(1, dataset.item_num))]


# --------------------------------------------------------------------------- end to end


def test_letter_run_end_to_end_exports_unique_ids_and_reuses_the_cache(tiny, monkeypatch):
    result = run_recbole_letter("LETTER", DATASET, config_dict=tiny)
    report = result["test_result"]
    assert report["collisions_after"] == 0
    assert 0 < report["utilisation@L1"] <= 1 and 0 <= report["gini@L1"] < 1
    assert np.isfinite(report["cf_neighbour_agreement"])
    assert report["cf_agreement_lift"] == pytest.approx(report["cf_neighbour_agreement"] / report["cf_agreement_chance"])
    assert result["best_valid_score"] == pytest.approx(report["cf_agreement_lift"])

    saved = Path(tiny["checkpoint_dir"])
    index = saved / f"{DATASET}.LETTER.index.json"
    assert (saved / f"{DATASET}.LETTER.code_usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, dataset = dataset_for(tiny)
    tokens = item_tokens(dataset)
    codes, info = load_index_json(index, tokens)  # raises if any item is missing
    assert codes.shape[0] == len(tokens) == len(json.loads(index.read_text()))
    assert info["colliding_items"] == 0

    # Rerun with another RecBole-side setting: the tokenizer is not refitted.
    def no_refit(*args, **kwargs):
        raise AssertionError("tokenizer refitted although its inputs and config are unchanged")

    monkeypatch.setattr(stage_module, "fit_tokenizer", no_refit)
    again = run_recbole_letter("LETTER", DATASET, config_dict={**tiny, "learning_rate": 0.5})
    assert again["test_result"] == report
    assert load_index_json(index, tokens)[0].tolist() == codes.tolist()

    # A tokenizer hyper-parameter changes: refit (which the patched fit refuses).
    with pytest.raises(AssertionError, match="tokenizer refitted"):
        run_recbole_letter("LETTER", DATASET, config_dict={**tiny, "alpha": 0.05})


def test_same_seed_same_ids_other_seed_other_ids(tiny, workdir):
    def ids(seed: int, cache: str) -> list:
        params = {**tiny, "tokenizer_seed": seed, "checkpoint_dir": str(workdir / cache)}
        config, dataset = dataset_for(params)
        return semantic_ids_for(config, dataset).tolist()

    first = ids(3, "a")
    assert ids(3, "b") == first  # separate caches: CF embeddings and tokenizer both recomputed
    assert ids(4, "b") != first


def test_tiger_run_receives_the_stage_table_and_its_checkpoint_carries_it(tiny):
    """The runner resolves the tokenizer stage before building TIGER and hands the table over in
    the config, which RecBole pickles into the checkpoint."""
    tiny_t5 = {"num_encoder_layers": 1, "num_decoder_layers": 1, "d_model": 16, "num_heads": 2, "d_kv": 8,
               "d_ff": 32, "epochs": 1, "train_batches_per_epoch": 2}
    result = run_recbole_letter("TIGER", DATASET, config_dict={**tiny, **tiny_t5})
    config, dataset = dataset_for({**tiny, **tiny_t5}, "TIGER")
    expected = semantic_ids_for(config, dataset)  # cached by the run
    checkpoint = compat.load_trusted_checkpoint(result["checkpoint"])
    carried = checkpoint["config"]["semantic_id_table"]
    assert isinstance(carried, SemanticIDTable) and np.array_equal(carried.table, expected)
    assert torch.equal(checkpoint["state_dict"]["semantic_ids"], torch.as_tensor(expected))

    resolve_stages(TIGER, config, dataset)
    assert np.array_equal(config["semantic_id_table"].table, expected)


def test_rqvae_run_reports_the_same_metrics(tiny):
    report = run_recbole_letter("RQVAE", DATASET, config_dict=tiny)["test_result"]
    assert report["collisions_after"] == 0
    assert (Path(tiny["checkpoint_dir"]) / f"{DATASET}.RQVAE.index.json").is_file()


# --------------------------------------------------------------------------- imported indices


def write_index(path: Path, tokens: list[str], codes: np.ndarray) -> Path:
    path.write_text(json.dumps({t: [f"<{'abcd'[l]}_{c}>" for l, c in enumerate(row)] for t, row in zip(tokens, codes)}))
    return path


def test_imported_index_gives_a_unique_padded_table(tiny, workdir):
    _, dataset = dataset_for(tiny)
    tokens = item_tokens(dataset)
    rng = np.random.default_rng(0)
    flat = rng.choice(4**3, size=len(tokens), replace=False)
    codes = np.stack([flat // 16, flat // 4 % 4, flat % 4], axis=1)
    codes[1] = codes[0]  # a published index may collide (LETTER's own do)
    index = write_index(workdir / "published.index.json", tokens + ["not-in-dataset"], np.vstack([codes, [[0, 0, 0]]]))
    config, dataset = dataset_for({**tiny, "item_tokenizer": str(index)})
    table = semantic_ids_for(config, dataset)
    assert table.shape[0] == dataset.item_num and table.dtype == np.int64
    assert (table[0] == -1).all()
    assert len({tuple(r) for r in table[1:]}) == dataset.item_num - 1
    assert (table[1:, :3] == codes).all()  # published codes kept; one extra level disambiguates
    assert table.shape[1] == 4 and sorted(table[1:3, 3]) == [0, 1] and table[3:, 3].max() == 0


def test_letter_model_and_report_cli_report_an_imported_index_alike(tiny, workdir, monkeypatch, capsys):
    import yaml

    from recbole_letter.tokenization import report as report_module

    _, dataset = dataset_for(tiny)
    tokens = item_tokens(dataset)
    codes = np.stack([np.arange(len(tokens)) % 3, np.arange(len(tokens)) % 8, np.arange(len(tokens)) // 8], axis=1)
    index = write_index(workdir / "published.index.json", tokens, codes)

    def no_fit(*args, **kwargs):
        raise AssertionError("a tokenizer was fitted although item_tokenizer names an index.json")

    monkeypatch.setattr(stage_module, "fit_tokenizer", no_fit)
    report = run_recbole_letter("LETTER", DATASET, config_dict={**tiny, "item_tokenizer": str(index)})["test_result"]
    # codebook_size 8 (TOKENIZER) -> level 1 uses 3 of 8 codes, and is reported over all 8
    assert report["codes@L1"] == 8 and report["used@L1"] == 3
    assert report["gini@L1"] == pytest.approx(report_module.gini(np.bincount(codes[:, 0], minlength=8)))
    assert np.isfinite(report["cf_agreement_lift"])
    assert (Path(tiny["checkpoint_dir"]) / f"{DATASET}.imported.index.json").is_file()

    # the CLI, with --dataset, prints the same numbers (CF agreement from the same cached stage)
    cfg_file = workdir / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({k: v for k, v in tiny.items() if k != "data_path"}))
    cli = report_module.main([str(index), "--dataset", DATASET, "--data_path", tiny["data_path"],
                              "--config_files", str(cfg_file)])
    assert "over ALL codes of the level" in capsys.readouterr().out
    for key in ("gini@L1", "entropy_bits@L2", "used@L3", "collisions_before", "cf_agreement_lift"):
        assert cli[key] == pytest.approx(report[key]), key


def test_index_missing_items_is_a_clear_error(tiny, workdir):
    _, dataset = dataset_for(tiny)
    tokens = item_tokens(dataset)
    index = write_index(workdir / "partial.index.json", tokens[:-2], np.arange(3 * (len(tokens) - 2)).reshape(-1, 3))
    config, dataset = dataset_for({**tiny, "item_tokenizer": str(index)})
    with pytest.raises(ValueError, match=r"does not cover the dataset: 2 of \d+ items missing"):
        semantic_ids_for(config, dataset)


def test_unknown_item_tokenizer_is_a_clear_error(tiny):
    config, dataset = dataset_for({**tiny, "item_tokenizer": "NoSuchTokenizer"})
    with pytest.raises(FileNotFoundError, match="neither LETTER, RQVAE nor an existing index.json"):
        semantic_ids_for(config, dataset)


@pytest.mark.skipif(not (SHARED_DATA / "Instruments").is_dir(), reason="shared/data/Instruments not available")
def test_published_instruments_index_imports(tmp_path, monkeypatch):
    from recbole_letter.data.convert import convert_letter

    monkeypatch.chdir(tmp_path)
    convert_letter(SHARED_DATA / "Instruments", "Instruments", tmp_path / "data")
    index = tmp_path / "data" / "Instruments" / "Instruments.index.json"
    assert index.is_file()
    params = {"data_path": str(tmp_path / "data"), "checkpoint_dir": str(tmp_path / "saved"),
              "item_tokenizer": str(index), "state": "ERROR"}
    config, _ = build_config("LETTER", "Instruments", config_dict=params)
    dataset = create_dataset(config)
    table = semantic_ids_for(config, dataset)
    assert table.shape[0] == dataset.item_num > 9000
    assert (table[0] == -1).all() and (table[1:] >= 0).all()
    assert np.unique(table[1:], axis=0).shape[0] == dataset.item_num - 1
    published = json.loads(index.read_text())
    tokens = item_tokens(dataset)
    first = [int(published[t][0][3:-1]) for t in tokens[:50]]  # "<a_12>" -> 12
    assert table[1:51, 0].tolist() == first


# --------------------------------------------------------------------------- cold start


def test_tokenize_items_unique_against_existing_and_leaves_them_alone(tiny):
    config, dataset = dataset_for(tiny)
    tok = load_or_fit_tokenizer(config, dataset)
    before = tok.codes.copy()
    emb = text_embeddings.item_text_embeddings(config, dataset)[1:]
    rng = np.random.default_rng(1)
    new_emb = (emb[:4] + 0.01 * rng.standard_normal(emb[:4].shape)).astype(np.float32)  # near-duplicates
    new = tok.tokenize_items(new_emb, tokens=["n1", "n2", "n3", "n4"])
    assert new.shape == (4, before.shape[1])
    assert (tok.codes[: len(before)] == before).all()
    everything = np.vstack([before, new])
    assert np.unique(everything, axis=0).shape[0] == len(everything)
    # the new items are registered: another batch stays unique against them as well
    more = tok.tokenize_items(new_emb, tokens=["m1", "m2", "m3", "m4"])
    assert np.unique(np.vstack([everything, more]), axis=0).shape[0] == len(everything) + 4
    with pytest.raises(ValueError, match="already have semantic IDs"):
        tok.tokenize_items(new_emb[:1], tokens=["n1"])
    with pytest.raises(ValueError, match=r"must be \[n, 24\]"):
        tok.tokenize_items(new_emb[:, :5])


# --------------------------------------------------------------------------- CF embeddings


def test_cf_embeddings_see_the_training_split_only(tiny, monkeypatch):
    """LightGCN must be built on (and so only propagate over) the training interactions: every
    user's last two interactions by time (valid, test) are absent from its graph."""
    from recbole.model.general_recommender.lightgcn import LightGCN

    seen = []
    original = LightGCN.__init__

    def spy(self, config, dataset):
        seen.append(dataset)
        original(self, config, dataset)

    monkeypatch.setattr(LightGCN, "__init__", spy)
    config, dataset = dataset_for(tiny)
    emb = cf_module.item_cf_embeddings(config, dataset)
    assert emb.shape == (dataset.item_num, 16) and (emb[0] == 0).all()
    assert len(seen) == 1
    graph = seen[0]
    users = graph.id2token(graph.uid_field, graph.inter_feat[graph.uid_field].numpy())
    items = graph.id2token(graph.iid_field, graph.inter_feat[graph.iid_field].numpy())
    trained = set(zip(users.tolist(), items.tolist()))

    lines = (Path(tiny["data_path"]) / DATASET / f"{DATASET}.inter").read_text().splitlines()[1:]
    by_user: dict[str, list[tuple[float, str]]] = {}
    for line in lines:
        user, item, ts = line.split("\t")
        by_user.setdefault(user, []).append((float(ts), item))
    held_out, kept = set(), set()
    for user, rows in by_user.items():
        ordered = [item for _, item in sorted(rows)]
        held_out |= {(user, item) for item in ordered[-2:]}
        kept |= {(user, item) for item in ordered[:-2]}
    assert trained == kept
    assert not trained & held_out


def test_unknown_cf_model_fails_before_any_stage(tiny):
    with pytest.raises(ValueError, match=r"cf_model='Foo' is not supported.*LightGCN"):
        run_recbole_letter("LETTER", DATASET, config_dict={**tiny, "cf_model": "Foo"})
    assert not (Path(tiny["checkpoint_dir"]) / "stages" / "text_embeddings").exists()


def test_bad_tokenizer_config_fails_before_any_stage(tiny):
    with pytest.raises(ValueError, match="cf_similarity"):
        run_recbole_letter("LETTER", DATASET, config_dict={**tiny, "cf_similarity": "euclid"})
    assert not (Path(tiny["checkpoint_dir"]) / "stages").exists()


def test_nan_in_item_embedding_file_is_a_clear_error(tiny, workdir):
    _, dataset = dataset_for(tiny)
    tokens = item_tokens(dataset)
    emb = np.random.default_rng(0).standard_normal((len(tokens), 8)).astype(np.float32)
    emb[3, 2] = np.nan
    path = workdir / "emb.npy"
    np.save(path, emb)
    (workdir / "emb.tokens.txt").write_text("\n".join(tokens) + "\n")
    with pytest.raises(ValueError, match=r"item_embedding_file .* 1 rows with NaN/inf \(first: row 3\)"):
        run_recbole_letter("LETTER", DATASET, config_dict={**tiny, "item_embedding_file": str(path)})


def test_precomputed_matrices_replace_both_stages(tiny, workdir, monkeypatch):
    """``item_embedding_file`` + ``cf_embedding_file``: no encoder, no LightGCN."""
    _, dataset = dataset_for(tiny)
    tokens = item_tokens(dataset)
    rng = np.random.default_rng(0)
    np.save(workdir / "text.npy", rng.standard_normal((len(tokens), 12)).astype(np.float32))
    (workdir / "text.tokens.txt").write_text("\n".join(tokens))
    np.save(workdir / "cf.npy", rng.standard_normal((len(tokens), 8)).astype(np.float32))
    (workdir / "cf.tokens.txt").write_text("\n".join(tokens))

    def boom(*args, **kwargs):
        raise AssertionError("a stage ran although its matrix was given")

    monkeypatch.setattr(cf_module, "_train_cf_model", boom)
    monkeypatch.setitem(text_embeddings.TEXT_ENCODERS, "fake-hash", boom)
    params = {**tiny, "item_embedding_file": str(workdir / "text.npy"), "cf_embedding_file": str(workdir / "cf.npy")}
    config, dataset = dataset_for(params)
    table = semantic_ids_for(config, dataset)
    assert table.shape == (dataset.item_num, table.shape[1]) and (table[0] == -1).all()
    assert np.unique(table[1:], axis=0).shape[0] == dataset.item_num - 1
    assert torch.get_num_threads() == 1


def test_tokenize_items_keeps_the_generator_vocabulary_unless_told_otherwise():
    """A new item that needs a larger extra-level code than the table has would be an ID the
    trained generator cannot emit: refused by default, allowed with an explicit size."""
    from recbole_letter.tokenization.rqvae import RQVAE
    from recbole_letter.stages.item_tokenizer import ItemTokenizer

    model = RQVAE(in_dim=2, hidden_dims=(), code_dim=2, num_levels=1, codebook_size=2, sinkhorn_levels=())
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.eye(2))
        model.codebooks[0].copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0]]))
    model.codebooks_initialised.fill_(True)
    existing = np.array([[0, 0], [0, 1], [1, 0]])  # code 0 already needs the extra level
    tok = ItemTokenizer(["a", "b", "c"], existing, existing[:, :1], [2], model=model)
    near_zero = np.array([[0.1, 0.0]], dtype=np.float32)
    with pytest.raises(ValueError, match="extra level has only 2 codes"):
        tok.tokenize_items(near_zero)
    assert tok.tokenize_items(near_zero, extra_level_size=3).tolist() == [[0, 2]]
    assert tok.tokenize_items(np.array([[9.0, 0.0]], dtype=np.float32)).tolist() == [[1, 1]]


# --------------------------------------------------------------------------- codebook collapse


def test_restart_dead_codes_moves_only_unused_codes_onto_the_data():
    from recbole_letter.tokenization.rqvae import RQVAE

    torch.manual_seed(0)
    model = RQVAE(in_dim=4, hidden_dims=(), code_dim=4, num_levels=2, codebook_size=6, sinkhorn_levels=())
    z = torch.randn(50, 4)
    model.init_codebooks(z, iters=5, seed=0)
    with torch.no_grad():
        model.codebooks[0][4:] = 100.0  # two codes far from every point
    before = [book.detach().clone() for book in model.codebooks]
    used = [torch.tensor([True] * 4 + [False] * 2), torch.ones(6, dtype=torch.bool)]
    restarted = model.restart_dead_codes(z, used, seed=0)
    assert restarted[0].tolist() == [4, 5] and restarted[1].numel() == 0
    assert torch.equal(model.codebooks[0][:4], before[0][:4]) and torch.equal(model.codebooks[1], before[1])
    # each restarted code now sits exactly on a (level-1) residual, i.e. on an encoder output
    on_data = (model.codebooks[0][4:, None, :] == z[None]).all(dim=2).any(dim=1)
    assert on_data.all()


def test_dead_code_restarts_prevent_first_level_collapse():
    """Unit-norm inputs sharing a large common direction (like MiniLM title embeddings): the
    encoder moves its outputs after k-means init and, without restarts, most first-level
    codes die (measured: 5/32 used); with restarts the codebook stays in use."""
    from recbole_letter.tokenization.fit import TokenizerConfig, fit_tokenizer

    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 64))[rng.integers(0, 12, 600)] + 0.5 * rng.standard_normal((600, 64))
    x = x + 3 * rng.standard_normal(64)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    common = dict(hidden_dims=(32,), code_dim=8, num_levels=2, codebook_size=32, epochs=30, batch_size=128,
                  kmeans_iters=20, seed=0, alpha=0.0, beta=0.0)
    used = {}
    for every in (0, 1):
        res = fit_tokenizer(x, None, TokenizerConfig(restart_dead_codes_every=every, **common), progress=False)
        used[every] = np.unique(res.codes[:, 0]).size
        assert (sum(res.restarted_codes) > 0) == bool(every)
    assert used[0] <= 12
    assert used[1] >= 28
    # every 5 epochs: codes unused during those 5 epochs are restarted, and only then
    res = fit_tokenizer(x, None, TokenizerConfig(restart_dead_codes_every=5, **common), progress=False)
    assert [e for e, k in enumerate(res.restarted_codes) if k] and all(
        (e + 1) % 5 == 0 for e, k in enumerate(res.restarted_codes) if k
    )
    assert np.unique(res.codes[:, 0]).size > used[0]
