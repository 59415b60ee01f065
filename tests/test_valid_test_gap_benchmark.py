"""benchmarks/valid_test_gap.py: history variants, and its numbers agree with RecBole's evaluator."""
import json

import torch

from recbole_letter.quick_start import run_recbole_letter


def test_history_variants_change_only_what_they_name(valid_test_gap):
    split = {"hist": torch.tensor([[3, 4, 5, 0], [7, 0, 0, 0]]), "length": torch.tensor([3, 1])}
    gen = torch.Generator().manual_seed(0)
    hist, length = valid_test_gap._variant(split, "newest item dropped", gen)
    assert hist.tolist() == [[3, 4, 0, 0], [0, 0, 0, 0]] and length.tolist() == [2, 1]
    hist, length = valid_test_gap._variant(split, "history reversed", gen)
    assert hist.tolist() == [[5, 4, 3, 0], [7, 0, 0, 0]] and length.tolist() == [3, 1]
    hist, _ = valid_test_gap._variant(split, "history shuffled", gen)
    assert sorted(hist[0, :3].tolist()) == [3, 4, 5] and hist[0, 3] == 0
    assert split["hist"].tolist() == [[3, 4, 5, 0], [7, 0, 0, 0]]  # the input is not modified


def test_ranks_and_ndcg(valid_test_gap):
    scores = torch.tensor([[0.0, 3.0, 2.0, 1.0], [0.0, 1.0, float("-inf"), 2.0]])
    ranks = valid_test_gap.ranks_of(scores, torch.tensor([2, 2]))
    assert ranks.tolist() == [1, 10**6]  # a -inf target is never a hit
    assert abs(valid_test_gap.ndcg_at_k(ranks) - 0.5 / 1.584962500721156) < 1e-9


def test_as_evaluated_matches_recboles_evaluator(valid_test_gap, tiny_seq_dataset, fast_config, workdir):
    root = tiny_seq_dataset("tiny", n_users=60, n_items=30)
    res = run_recbole_letter("SASRec", "tiny", config_dict={**fast_config, "data_path": str(root), "epochs": 2,
                                                          "train_neg_sample_args": None, "state": "ERROR"})
    out = workdir / "gap.json"
    assert valid_test_gap.main([res["checkpoint"], "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (label, diag), = result["checkpoints"].items()
    assert label.startswith("SASRec")
    assert abs(diag["as evaluated"]["valid"] - res["best_valid_result"]["ndcg@10"]) < 2e-4
    assert abs(diag["as evaluated"]["test"] - res["test_result"]["ndcg@10"]) < 2e-4
    assert set(result["data_baselines"]) >= {"Pop", "item-kNN (order-blind bag of the history)", "Markov (newest item -> next)"}
    assert all(0 <= v <= 1 for v in result["data_baselines"]["Pop"].values())
    assert out.with_suffix(".md").read_text().count("| as evaluated |") == 1


def test_train_mode_tests_the_current_weights_after_every_validation(valid_test_gap, tiny_seq_dataset, fast_config, workdir):
    root = tiny_seq_dataset("tiny", n_users=60, n_items=30)
    settings = {**fast_config, "data_path": str(root), "epochs": 3, "train_neg_sample_args": None, "state": "ERROR"}
    out = workdir / "curve.json"
    argv = ["--train=SASRec", "--dataset=tiny", "--out", str(out)] + [f"--{k}={v}" for k, v in settings.items()]
    assert valid_test_gap.main(argv) == 0
    curve = json.loads(out.read_text())["curve"]
    assert [point["epoch"] for point in curve] == [1, 2, 3]
    # the last point is the final weights: what the runner reports when it does not reload the best
    res = run_recbole_letter("SASRec", "tiny", config_dict=settings, saved=False)
    assert abs(curve[-1]["test_ndcg@10"] - res["test_result"]["ndcg@10"]) < 2e-4
