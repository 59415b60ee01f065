"""Using a trained model: checkpoints load in a fresh process and recommend what evaluation ranked.

The tiny dataset is named ``ml-100k`` on purpose: RecBole's Config would swap in its bundled
ml-100k, so every test here also shows the user's data path survives into the checkpoint.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_letter import compat
from recbole_letter.quick_start import build_config, run_recbole_letter
from recbole_letter.recommend import Recommender, RecommendError
from recbole_letter.recommend import main as recommend_main

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "checkpoint_probe.py"
DATASET = "ml-100k"
K = 5


def write_titles(folder: Path, n_items: int) -> None:
    lines = ["item_id:token\tmovie_title:token_seq\tyear:token"]
    lines += [f"{i}\tFilm number {i}\t{1990 + i % 9}" for i in range(1, n_items + 1)]
    (folder / f"{DATASET}.item").write_text("\n".join(lines) + "\n", encoding="utf-8")


def record_eval_topk(monkeypatch: pytest.MonkeyPatch, k: int) -> dict[str, dict]:
    """Record, per user, the top-``k`` RecBole's evaluator computes (the last evaluation wins: test)."""
    from recbole.trainer import Trainer

    seen: dict[str, dict] = {}
    original = Trainer._full_sort_batch_eval

    def recording(self, batched_data):
        interaction, scores, positive_u, positive_i = original(self, batched_data)
        top_scores, top_items = torch.topk(scores, k)
        dataset = self.model_dataset_for_test
        users = dataset.id2token(dataset.uid_field, interaction[dataset.uid_field].cpu().numpy())
        items = dataset.id2token(dataset.iid_field, top_items.cpu().numpy())
        for user, row, vals in zip(users, items, top_scores.cpu().numpy()):
            seen[str(user)] = {"items": [str(t) for t in row], "scores": vals.tolist()}
        return interaction, scores, positive_u, positive_i

    original_evaluate = Trainer.evaluate

    def evaluate(self, eval_data, *args, **kwargs):
        self.model_dataset_for_test = eval_data._dataset
        return original_evaluate(self, eval_data, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_full_sort_batch_eval", recording)
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return seen


def run_probe(model_file: str, users: list[str], out: Path, env: dict | None = None) -> dict:
    """Load ``model_file`` in a fresh interpreter (RecBole's API and our CLI) and return its output."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(
        [sys.executable, str(PROBE), model_file, str(out), str(K), *users],
        capture_output=True, text=True, timeout=600, env=environment, cwd=out.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def user_sequences(inter_file: Path) -> dict[str, list[str]]:
    """Each user's items in time order, straight from the ``.inter`` file."""
    rows = [line.split("\t") for line in inter_file.read_text().splitlines()[1:]]
    rows.sort(key=lambda r: float(r[2]))
    sequences: dict[str, list[str]] = {}
    for user, item, _ in rows:
        sequences.setdefault(user, []).append(item)
    return sequences


@pytest.fixture()
def sasrec(tiny_seq_dataset, fast_config, monkeypatch) -> dict:
    root = tiny_seq_dataset(DATASET, n_users=40, n_items=25, min_len=8, max_len=14)
    write_titles(root / DATASET, 25)
    eval_topk = record_eval_topk(monkeypatch, K)
    params = {**fast_config, "data_path": str(root)}
    result = run_recbole_letter("SASRec", DATASET, config_dict=params, saved=True)
    return {"root": root, "params": params, "checkpoint": result["checkpoint"], "eval_topk": dict(eval_topk)}


# ----------------------------------------------------------------------------- fresh process


def test_sasrec_checkpoint_recommends_in_a_fresh_process(sasrec, workdir) -> None:
    users = ["1", "7", "23", "40"]
    eval_topk = sasrec["eval_topk"]
    assert set(users) <= set(eval_topk) and len(eval_topk) == 40
    got = run_probe(sasrec["checkpoint"], users, workdir / "probe.json")

    for user in users:
        assert got["recbole"][user] == eval_topk[user]["items"], user  # RecBole's own case study
        np.testing.assert_allclose(got["recbole_scores"][user], eval_topk[user]["scores"], rtol=1e-5, atol=1e-6)
        cli = got["cli_test"][user]
        assert [r["item"] for r in cli] == eval_topk[user]["items"], user
        assert [r["rank"] for r in cli] == list(range(1, K + 1))
        assert all(r["title"] == f"Film number {r['item']}" for r in cli)

    # default: next items after the whole history, none of which is recommended again
    sequences = user_sequences(sasrec["root"] / DATASET / f"{DATASET}.inter")
    for user in users:
        full = got["cli_full"][user]
        assert len(full) == K
        assert not {r["item"] for r in full} & set(sequences[user]), user
        scores = [r["score"] for r in full]
        assert scores == sorted(scores, reverse=True)


def test_cli_entry_point_prints_a_table_and_fails_clearly(sasrec, workdir) -> None:
    base = [sys.executable, "-m", "recbole_letter.recommend", f"--model_file={sasrec['checkpoint']}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*base, "--users=1,2", "--topk=3"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].split() == ["user", "rank", "item", "title", "score"]
    assert len(lines) == 1 + 2 * 3
    assert [line.split()[:2] for line in lines[1:4]] == [["1", "1"], ["1", "2"], ["1", "3"]]
    assert "Film number" in lines[1]
    assert "\r" not in done.stderr  # no progress bar when stderr is not a terminal

    done = subprocess.run([*base, "--users=1,nobody"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 2
    assert "unknown user(s) 'nobody'" in done.stderr and "Fix:" in done.stderr and done.stdout == ""


# ----------------------------------------------------------------------------- in-process checks


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = recommend_main(args)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bad_input_exits_2_with_the_fix(sasrec, workdir, capsys) -> None:
    ckpt = sasrec["checkpoint"]
    cases = {
        "missing model file": ([f"--model_file={workdir / 'nope.pth'}", "--users=1"], "does not exist"),
        "missing users file": ([f"--model_file={ckpt}", f"--users_file={workdir / 'nope.txt'}"], "--users_file"),
        "empty users": ([f"--model_file={ckpt}", "--users=,"], "no user tokens"),
        "topk too large": ([f"--model_file={ckpt}", "--users=1", "--topk=500"], "--topk=500"),
        "zero topk": ([f"--model_file={ckpt}", "--users=1", "--topk=0"], "positive integer"),
        "no beam": ([f"--model_file={ckpt}", "--users=1", "--beam_size=5"], "does not decode with a beam"),
        "bad title field": ([f"--model_file={ckpt}", "--users=1", "--title_field=nope"], "movie_title"),
    }
    for name, (args, needle) in cases.items():
        code, out, err = run_cli(args, capsys)
        assert code == 2, name
        assert needle in err and "error:" in err, (name, err)


def test_users_file_batches_and_csv(sasrec, workdir, capsys) -> None:
    users_file = workdir / "users.txt"
    users_file.write_text("# who\n3\n1, 2\n\n40\n", encoding="utf-8")
    code, out, err = run_cli(
        [f"--model_file={sasrec['checkpoint']}", f"--users_file={users_file}", "--topk=2", "--format=csv", "--batch_size=2"],
        capsys,
    )
    assert code == 0, err
    rows = [line.split(",") for line in out.strip().splitlines()]
    assert rows[0] == ["user", "rank", "item", "title", "score"]
    assert [r[0] for r in rows[1:]] == ["3", "3", "1", "1", "2", "2", "40", "40"]

    # batching does not change results
    code, single, _ = run_cli(
        [f"--model_file={sasrec['checkpoint']}", "--users=3,1,2,40", "--topk=2", "--format=csv", "--batch_size=256"], capsys
    )
    assert single == out


def test_full_history_ends_with_the_latest_interaction(sasrec) -> None:
    rec = Recommender.from_checkpoint(sasrec["checkpoint"])
    sequences = user_sequences(sasrec["root"] / DATASET / f"{DATASET}.inter")
    users = [u for u in sequences]
    rows = rec._rows_for(rec.user_ids(users), "full")
    capacity = rows[rec.dataset.item_id_list_field].shape[1]
    lengths = rows[rec.dataset.item_list_length_field].tolist()
    lists = rows[rec.dataset.item_id_list_field]
    assert {min(len(s), capacity) for s in sequences.values()} == set(lengths)
    assert any(len(s) > capacity for s in sequences.values())  # both the shift and the append case
    for user, length, ids in zip(users, lengths, lists):
        tokens = rec.dataset.id2token(rec.dataset.iid_field, ids[:length].numpy()).tolist()
        assert tokens == sequences[user][-capacity:], user
        assert (ids[length:] == 0).all()
    timestamps = rows["timestamp_list"]
    assert (timestamps[:, 1:][lists[:, 1:] > 0] >= timestamps[:, :-1][lists[:, 1:] > 0]).all()


def test_excluding_history_never_repeats_an_item(sasrec) -> None:
    rec = Recommender.from_checkpoint(sasrec["checkpoint"])
    sequences = user_sequences(sasrec["root"] / DATASET / f"{DATASET}.inter")
    users = list(sequences)
    full = rec.recommend(users, 8, history="full")
    test = rec.recommend(users, 8, history="test")
    kept = rec.recommend(users, 24, history="test", exclude_history=False)
    for row, user in enumerate(users):
        seen = set(sequences[user])
        assert not seen & set(rec.item_tokens(full.items[row]).tolist())
        # test mode leaves out what came before the test item, so the test item itself may appear
        assert not set(sequences[user][:-1]) & set(rec.item_tokens(test.items[row]).tolist())
        assert set(sequences[user][:-1]) & set(rec.item_tokens(kept.items[row]).tolist())
    assert np.isfinite(full.scores).all()


def test_general_model_ranks_as_evaluation_did(tiny_seq_dataset, fast_config, monkeypatch) -> None:
    """BPR (no sequence): --history=test --keep_history ranks as the evaluation did (our protocol's
    ``repeatable: True`` masks no history there), and leaving history out removes exactly the user's items."""
    from recbole.utils.case_study import full_sort_topk

    root = tiny_seq_dataset(DATASET, n_users=40, n_items=25)
    eval_topk = record_eval_topk(monkeypatch, K)
    ckpt = run_recbole_letter("BPR", DATASET, config_dict={**fast_config, "data_path": str(root)}, saved=True)["checkpoint"]
    rec = Recommender.from_checkpoint(ckpt)
    assert not rec.sequential
    users = ["1", "7", "23", "40"]
    ours = rec.recommend(users, K, history="test", exclude_history=False)
    unseen = rec.recommend(users, K, history="test")
    uids = rec.user_ids(users)
    _, theirs = full_sort_topk(uids, rec.model, rec.test_data, K, rec.config["device"])
    sequences = user_sequences(root / DATASET / f"{DATASET}.inter")
    full = rec.recommend(users, K, history="full")
    for row, user in enumerate(users):
        assert rec.item_tokens(ours.items[row]).tolist() == eval_topk[user]["items"], user
        assert rec.item_tokens(theirs[row].numpy()).tolist() == eval_topk[user]["items"], user
        assert not set(rec.item_tokens(full.items[row]).tolist()) & set(sequences[user])
        assert not set(rec.item_tokens(unseen.items[row]).tolist()) & set(sequences[user][:-1])
        kept = [t for t in rec.item_tokens(ours.items[row]).tolist() if t not in sequences[user][:-1]]
        assert rec.item_tokens(unseen.items[row]).tolist()[: len(kept)] == kept  # same order otherwise


# ----------------------------------------------------------------------------- trust and identity


def strip_marker(path: str, target: Path) -> Path:
    checkpoint = compat.load_trusted_checkpoint(path)
    del checkpoint[compat.CHECKPOINT_MARKER]
    torch.save(checkpoint, target)
    return target


def test_marker_is_read_without_unpickling_code(sasrec, workdir) -> None:
    marker = compat.read_checkpoint_marker(sasrec["checkpoint"])
    assert marker["writer"] == "recbole_letter" and marker["format"] == compat.CHECKPOINT_FORMAT
    assert marker["data"]["dataset"] == DATASET and len(marker["data"]["user_tokens"]) == 41

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(workdir / "pwned"),))

    evil = workdir / "evil.pth"
    torch.save({"payload": Boom(), compat.CHECKPOINT_MARKER: {"format": 1}}, evil)
    assert compat.read_checkpoint_marker(evil) == {"format": 1}
    assert not (workdir / "pwned").exists()


def test_foreign_checkpoint_needs_an_opt_in(sasrec, workdir, monkeypatch, capsys) -> None:
    foreign = strip_marker(sasrec["checkpoint"], workdir / "foreign.pth")
    monkeypatch.delenv(compat.TRUST_ENV_VAR, raising=False)
    with pytest.raises(compat.UntrustedCheckpointError, match=compat.TRUST_ENV_VAR):
        compat.load_data_and_model(foreign, log=False)
    code, _, err = run_cli([f"--model_file={foreign}", "--users=1"], capsys)
    assert code == 2 and "--trust_checkpoint" in err

    code, out, err = run_cli([f"--model_file={foreign}", "--users=1", "--trust_checkpoint", "--format=csv"], capsys)
    assert code == 0, err
    monkeypatch.setenv(compat.TRUST_ENV_VAR, "1")
    _, model, *_ = compat.load_data_and_model(foreign, log=False)
    assert type(model).__name__ == "SASRec"


def test_other_dataset_files_are_a_clear_error(sasrec, tiny_seq_dataset, workdir, capsys) -> None:
    other = tiny_seq_dataset("other", n_users=40, n_items=25, seed=5)
    # the same name, other files: ids would point at other users and items
    moved = workdir / "moved"
    (moved / DATASET).mkdir(parents=True)
    (moved / DATASET / f"{DATASET}.inter").write_text((other / "other" / "other.inter").read_text())
    with pytest.raises(compat.CheckpointMismatchError, match="trained on other 'ml-100k' files") as info:
        compat.load_data_and_model(sasrec["checkpoint"], data_path=moved / DATASET, log=False)
    assert "Fix:" in str(info.value)
    code, _, err = run_cli([f"--model_file={sasrec['checkpoint']}", "--users=1", f"--data_path={moved}"], capsys)
    assert code == 2 and "ids differ" in err

    # another dataset's checkpoint evaluated on this data
    from recbole.data import create_dataset, data_preparation

    config, spec = build_config("SASRec", "other", config_dict={**sasrec["params"], "data_path": str(other)})
    _, _, test_data = data_preparation(config, create_dataset(config))
    trainer = spec.trainer_class(config, spec.model_class(config, test_data._dataset))
    with pytest.raises(compat.CheckpointMismatchError, match="trained on dataset 'ml-100k', not 'other'"):
        trainer.evaluate(test_data, load_best_model=True, model_file=sasrec["checkpoint"])


def test_moved_data_loads_with_data_path(sasrec, workdir) -> None:
    import shutil

    moved = workdir / "elsewhere"
    shutil.copytree(sasrec["root"] / DATASET, moved / DATASET)
    shutil.rmtree(sasrec["root"])
    with pytest.raises(FileNotFoundError, match="data_path"):
        compat.load_data_and_model(sasrec["checkpoint"], log=False)
    config, model, dataset, *_ = compat.load_data_and_model(sasrec["checkpoint"], data_path=moved / DATASET, log=False)
    assert dataset.user_num == 41 and Path(config["data_path"]) == moved / DATASET


def test_recbole_quick_start_is_patched_even_if_imported_first() -> None:
    # only possible when numpy 2's removed aliases were restored by hand: RecBole needs them
    code = (
        "import numpy as np\n"
        "np.float_, np.complex_, np.unicode_, np.bool8 = np.float64, np.complex128, np.str_, np.bool_\n"
        "import recbole.quick_start as q\n"
        "original = q.load_data_and_model\n"
        "import recbole_letter\n"
        "from recbole_letter import compat\n"
        "from recbole.quick_start import load_data_and_model\n"
        "assert original is not compat.load_data_and_model\n"
        "assert load_data_and_model is compat.load_data_and_model\n"
        "assert q.quick_start.load_data_and_model is compat.load_data_and_model\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_recbole_quick_start_is_patched_in_this_process() -> None:
    import recbole.quick_start as q

    assert q.load_data_and_model is compat.load_data_and_model
    assert q.quick_start.load_data_and_model is compat.load_data_and_model


# ----------------------------------------------------------------------------- generative models: TIGER, LCRec

TIGER_TINY = {
    # tokenizer stages: precomputed item/CF embeddings (no text encoder, no LightGCN), a tiny LETTER
    "tokenizer_epochs": 3,
    "codebook_size": 8,
    "num_levels": 3,
    "n_div_clusters": 2,
    "div_refresh_every": 2,
    "tokenizer_hidden_dims": [16],
    "code_dim": 8,
    "kmeans_iters": 10,
    "tokenizer_batch_size": 32,
    # a T5 that trains a few batches in seconds
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "d_model": 32,
    "num_heads": 2,
    "d_kv": 16,
    "d_ff": 64,
    "train_batches_per_epoch": 3,
    "beam_size": 10,
    "topk": [K],
    "valid_metric": f"NDCG@{K}",
    "state": "ERROR",
}


def write_embeddings(root: Path, workdir: Path) -> dict:
    """Random item and CF embeddings for every item of the ``.inter`` file (token sidecars)."""
    tokens = sorted({line.split("\t")[1] for line in (root / DATASET / f"{DATASET}.inter").read_text().splitlines()[1:]})
    rng = np.random.default_rng(3)
    files = {}
    for key, dim in (("item_embedding_file", 12), ("cf_embedding_file", 8)):
        path = workdir / f"{key}.npy"
        np.save(path, rng.standard_normal((len(tokens), dim)).astype(np.float32))
        path.with_suffix(".tokens.txt").write_text("\n".join(tokens) + "\n")
        files[key] = str(path)
    return files


# LC-Rec on a tiny random Llama (2 layers, d 64; no download), trained on next-item prompts only
LCREC_TINY = {"llm_path": "tiny-random", "lcrec_tasks": "seqrec", "decode_batch_size": 16}


@pytest.mark.parametrize(
    ("model", "tokenizer", "extra"),
    [("TIGER", "LETTER", {}), ("TIGER", "RQVAE", {}), ("LCRec", "LETTER", LCREC_TINY)],
    ids=["LETTER-TIGER", "RQVAE-TIGER", "LETTER-LCRec"],
)
def test_generative_checkpoint_recommends_without_the_stage_cache(
    model, tokenizer, extra, tiny_seq_dataset, fast_config, workdir, monkeypatch
):
    import shutil

    root = tiny_seq_dataset(DATASET, n_users=40, n_items=25, min_len=8, max_len=14)
    write_titles(root / DATASET, 25)
    eval_topk = record_eval_topk(monkeypatch, K)
    params = {**fast_config, **TIGER_TINY, **write_embeddings(root, workdir), "data_path": str(root),
              "item_tokenizer": tokenizer, **extra}
    result = run_recbole_letter(model, DATASET, config_dict=params, saved=True)
    stages = Path(params["checkpoint_dir"]) / "stages"
    assert any((stages / "tokenizer").iterdir())
    shutil.rmtree(stages)  # recommending must not need (or refit) any stage

    users = ["1", "7", "23", "40"]
    got = run_probe(result["checkpoint"], users, workdir / "probe.json")
    assert not stages.exists()
    for user in users:
        assert got["recbole"][user] == eval_topk[user]["items"], user
        np.testing.assert_allclose(got["recbole_scores"][user], eval_topk[user]["scores"], rtol=1e-4, atol=1e-5)
        assert [r["item"] for r in got["cli_test"][user]] == eval_topk[user]["items"], user
    sequences = user_sequences(root / DATASET / f"{DATASET}.inter")
    for user in users:
        full = got["cli_full"][user]
        assert 1 <= len(full) <= K  # the beam (10) minus the user's own items
        assert not {r["item"] for r in full} & set(sequences[user])
        assert all(np.isfinite(r["score"]) and r["score"] <= 0 for r in full)  # log-probabilities


def test_tiger_checkpoint_refuses_another_id_table(tiny_seq_dataset, fast_config, workdir) -> None:
    from recbole.data import create_dataset, data_preparation

    from recbole_letter.tokenization.semantic_ids import SemanticIDTable

    root = tiny_seq_dataset(DATASET, n_users=40, n_items=25)
    params = {**fast_config, **TIGER_TINY, **write_embeddings(root, workdir), "data_path": str(root)}
    result = run_recbole_letter("TIGER", DATASET, config_dict=params, saved=True)
    checkpoint = compat.load_trusted_checkpoint(result["checkpoint"])
    trained = checkpoint["config"]["semantic_id_table"].table
    assert isinstance(checkpoint["config"]["semantic_id_table"], SemanticIDTable)

    config, spec = build_config("TIGER", DATASET, config_dict=params)
    _, _, test_data = data_preparation(config, create_dataset(config))
    swapped = trained.copy()
    swapped[[1, 2]] = swapped[[2, 1]]  # two items trade codes
    config["semantic_id_table"] = SemanticIDTable.from_padded(swapped)
    trainer = spec.trainer_class(config, spec.model_class(config, test_data._dataset))
    with pytest.raises(ValueError, match="different semantic-ID table"):
        trainer.evaluate(test_data, load_best_model=True, model_file=result["checkpoint"])


def test_beam_bounds_the_cli_topk(tiny_seq_dataset, fast_config, workdir, capsys) -> None:
    root = tiny_seq_dataset(DATASET, n_users=40, n_items=25)
    params = {**fast_config, **TIGER_TINY, **write_embeddings(root, workdir), "data_path": str(root)}
    ckpt = run_recbole_letter("TIGER", DATASET, config_dict=params, saved=True)["checkpoint"]
    code, _, err = run_cli([f"--model_file={ckpt}", "--users=1", "--topk=12"], capsys)
    assert code == 2 and "beam_size=10" in err and "--beam_size=12" in err
    code, out, err = run_cli([f"--model_file={ckpt}", "--users=1,2", "--topk=12", "--beam_size=24", "--format=json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert all(len(r["items"]) >= 6 for r in rows)  # a wider beam, more items after leaving out history
    code, out, err = run_cli([f"--model_file={ckpt}", "--users=1,2", "--topk=10", "--format=json"], capsys)
    assert code == 0
    # the beam of 10 holds some of each user's own items, which are left out
    assert any(len(r["items"]) < 10 for r in json.loads(out))
    assert "fewer than 10 items" in err and "beam_size=10" in err
