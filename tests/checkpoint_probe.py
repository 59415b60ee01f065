"""Run in a fresh interpreter by tests/test_recommend.py: use a saved checkpoint as a RecBole user would.

``python checkpoint_probe.py <model_file> <out.json> <k> <user> [<user> ...]`` writes
``{"recbole": {user: [items]}, "cli_test": {...}, "cli_full": {...}}``:
- ``recbole``: RecBole's own ``load_data_and_model`` + ``case_study.full_sort_topk`` (with
  ``recbole_letter`` imported first, nothing else);
- ``cli_test`` / ``cli_full``: ``recbole_letter.recommend`` with ``--history=test --keep_history``
  and with its defaults, as parsed JSON output.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    model_file, out, k, users = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    import torch

    torch.set_num_threads(1)
    import recbole_letter  # noqa: F401  (the only thing a RecBole user adds)
    from recbole.quick_start import load_data_and_model
    from recbole.utils.case_study import full_sort_topk

    sys.argv = sys.argv[:1]  # RecBole's Config would parse our arguments
    config, model, dataset, _train, _valid, test_data = load_data_and_model(model_file)
    uids = dataset.token2id(dataset.uid_field, users)
    scores, items = full_sort_topk(uids, model, test_data, k, config["device"])
    tokens = dataset.id2token(dataset.iid_field, items.numpy())
    result = {
        "recbole": {u: [str(t) for t in row] for u, row in zip(users, tokens)},
        "recbole_scores": {u: row.tolist() for u, row in zip(users, scores)},
    }

    from recbole_letter.recommend import main as recommend

    for name, extra in (("cli_test", ["--history=test", "--keep_history"]), ("cli_full", [])):
        path = out.with_suffix(f".{name}.json")
        code = recommend(
            [f"--model_file={model_file}", f"--users={','.join(users)}", f"--topk={k}", "--format=json",
             f"--output={path}", *extra]
        )
        assert code == 0, code
        result[name] = {row["user"]: row["items"] for row in json.loads(path.read_text())}
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
