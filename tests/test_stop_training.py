"""An epoch callback can end training early (a benchmark's time limit); the best model is still tested."""
from __future__ import annotations

from recbole_letter.quick_start import StopTraining, run_recbole_letter

TINY_SASREC = {
    "epochs": 6, "stopping_step": 10, "train_batch_size": 64, "hidden_size": 16, "inner_size": 32,
    "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 5, "state": "ERROR", "show_progress": False,
}


def test_callback_stop_ends_training_and_tests_best(tiny_seq_dataset, workdir) -> None:
    root = tiny_seq_dataset("tiny", n_users=30, n_items=20)
    seen: list[int] = []

    def stop_after_two(epoch_idx: int, valid_score: float) -> None:
        seen.append(epoch_idx)
        if len(seen) == 2:
            raise StopTraining("time limit: test")

    res = run_recbole_letter(
        "SASRec", "tiny", config_dict={**TINY_SASREC, "data_path": str(root), "checkpoint_dir": str(workdir / "ck")},
        epoch_callback=stop_after_two,
    )
    assert seen == [0, 1]
    assert res["epochs"] == 2 and res["stopped_by_callback"] == "time limit: test"
    assert res["best_valid_result"] and "ndcg@10" in res["test_result"]


def test_run_without_stop_has_no_stop_field(tiny_seq_dataset, workdir) -> None:
    root = tiny_seq_dataset("tiny", n_users=30, n_items=20)
    res = run_recbole_letter(
        "SASRec", "tiny", config_dict={**TINY_SASREC, "epochs": 2, "data_path": str(root),
                                       "checkpoint_dir": str(workdir / "ck")},
        epoch_callback=lambda e, s: None,
    )
    assert res["epochs"] == 2 and "stopped_by_callback" not in res
