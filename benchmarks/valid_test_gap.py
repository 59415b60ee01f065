"""Why the generators lose more NDCG@10 from validation to test than SASRec (leave-one-out, full sort).

Each user's second-to-last item is the validation target and the last one the test target; the
test history is the validation history plus the validation item. This script separates the
possible causes on one dataset and the checkpoints given:

1. **Data baselines** (no training, seconds), on the split of the first checkpoint:
   ``Pop`` (training counts), ``item-kNN`` (an order-blind bag of the last
   ``MAX_ITEM_LIST_LENGTH`` history items: summed cosine co-occurrence over users' training
   items) and ``Markov`` (first-order transitions newest item -> next, counted in the training
   rows). It also scores both targets from the *same* input (the validation history) with item-kNN,
   split by whether the test item shares its timestamp with the validation item.
2. **Per checkpoint**: NDCG@10 on valid and test as the evaluator computes it, then with the
   newest history item dropped, the history reversed / shuffled (same items, other order), and the
   user's history items masked out of the ranking; plus the share of top-10 slots that are history
   items (ml-100k has no repeats, so those slots are wasted).

A model whose score does not move when its history is shuffled is an order-blind bag of items; if
the order-blind item-kNN shows the same valid->test drop while the newest-item Markov chain does
not, the drop is a property of the data for such models, not an evaluation bug.

3. **Test after every validation** (``--train MODEL``): trains as the runner does and evaluates
   the test split with the current weights after each validation, so a low test/valid ratio at
   every epoch rules out the luck of selecting the best of several noisy validations.

Writes ``benchmarks/results/valid_test_gap_<dataset>.json`` and ``.md`` (``--train``:
``valid_test_curve_<dataset>_<model>.json``; ``--out`` to change).

Examples (checkpoints from ``make demo`` / ``benchmarks/quality.py --converge``)::

    python benchmarks/valid_test_gap.py saved/SASRec-*.pth saved/TIGER-*.pth
    python benchmarks/valid_test_gap.py --train=TIGER --config_files=properties/demo.yaml \
        --epochs=6 --train_batches_per_epoch=100      # the demo's 600 batches, 6 validations
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from common import RESULTS

TOPK = 10


def ndcg_at_k(ranks: np.ndarray) -> float:
    """Mean NDCG@10 of one target per user, from its 0-based rank (items scoring exactly as
    the target do not count against it: a trained model's float scores almost never tie, and
    then this equals RecBole's evaluator; the Pop baseline's integer counts do tie, so its
    numbers here are slightly above RecBole's Pop)."""
    ranks = np.asarray(ranks)
    return float(np.mean(np.where(ranks < TOPK, 1.0 / np.log2(ranks + 2.0), 0.0)))


def ranks_of(scores: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """0-based rank of each target in its row of ``scores``; a ``-inf`` target is unranked."""
    target_scores = scores[torch.arange(len(targets)), targets]
    ranks = (scores > target_scores[:, None]).sum(1)
    ranks[~torch.isfinite(target_scores)] = 10**6
    return ranks.numpy()


def eval_rows(loader) -> dict[str, Any]:
    """User, history (as the model sees it), length, target and target timestamp of each row."""
    users, hist, length, target, stamp = [], [], [], [], []
    for inter, *_ in loader:
        users.append(inter["user_id"]), hist.append(inter["item_id_list"]), length.append(inter["item_length"])
        target.append(inter["item_id"]), stamp.append(inter["timestamp"])
    order = torch.argsort(torch.cat(users))
    return {k: torch.cat(v)[order] for k, v in
            (("user", users), ("hist", hist), ("length", length), ("target", target), ("timestamp", stamp))}


def _rounded(ranks: np.ndarray) -> float | None:
    """NDCG@10 rounded for the report; ``None`` for an empty group (e.g. no timestamp ties)."""
    return round(ndcg_at_k(ranks), 4) if len(ranks) else None


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------- part 1: data baselines
def data_baselines(train_dataset: Any, valid: dict, test: dict, n_items: int) -> dict[str, Any]:
    feat = train_dataset.inter_feat
    users, items = feat["user_id"].numpy(), feat["item_id"].numpy()
    first = feat["item_id_list"][:, 0].numpy()
    n_users = int(max(users.max(), valid["user"].max())) + 1
    owned = np.zeros((n_users, n_items), dtype=np.float32)  # a user's training items
    owned[users, items] = 1
    owned[users, first] = 1
    owned[:, 0] = 0
    counts = owned.sum(0)
    cooc = owned.T @ owned
    np.fill_diagonal(cooc, 0)
    cosine = cooc / np.sqrt(np.outer(counts, counts) + 1e-9)
    newest = feat["item_id_list"][torch.arange(len(feat)), feat["item_length"] - 1].numpy()
    markov = np.zeros((n_items, n_items), dtype=np.float32)
    np.add.at(markov, (newest, items), 1)
    markov += 1e-6 * counts  # unseen transitions: fall back to popularity order

    def history_lists(split: dict) -> list[np.ndarray]:
        return [split["hist"][i, : split["length"][i]].numpy() for i in range(len(split["user"]))]

    scorers: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "Pop": lambda h: counts.copy(),
        "item-kNN (order-blind bag of the history)": lambda h: cosine[h].sum(0),
        "Markov (newest item -> next)": lambda h: markov[h[-1]].copy(),
    }
    out: dict[str, Any] = {}
    for name, score in scorers.items():
        row = {}
        for split_name, split in (("valid", valid), ("test", test)):
            for masked in (False, True):
                ranks = []
                for h, t in zip(history_lists(split), split["target"].numpy()):
                    s = score(h).astype(np.float64)
                    s[0] = -np.inf
                    if masked:
                        s[h] = -np.inf
                    ranks.append(int((s > s[t]).sum()))
                row[f"{split_name}{'_history_masked' if masked else ''}"] = round(ndcg_at_k(np.array(ranks)), 4)
        out[name] = row

    # the same input (validation history) scored against both targets, split by timestamp ties
    tied = (test["timestamp"] == valid["timestamp"]).numpy()
    same_input = {"both targets from the validation history, item-kNN, history masked": {}}
    for target_name, split in (("valid target (n-1)", valid), ("test target (n)", test)):
        ranks = []
        for h, t in zip(history_lists(valid), split["target"].numpy()):
            s = cosine[h].sum(0).astype(np.float64)
            s[0] = -np.inf
            s[h] = -np.inf
            ranks.append(int((s > s[t]).sum()))
        ranks = np.array(ranks)
        same_input["both targets from the validation history, item-kNN, history masked"][target_name] = {
            "all": _rounded(ranks),
            "test item tied with valid item": _rounded(ranks[tied]),
            "test item later than valid item": _rounded(ranks[~tied]),
        }
    out["same_input"] = same_input
    popularity = {}
    for target_name, split in (("valid target (n-1)", valid), ("test target (n)", test)):
        train_counts = counts[split["target"].numpy()]
        popularity[target_name] = {"all": float(np.median(train_counts)),
                                   "test item tied with valid item": float(np.median(train_counts[tied])) if tied.any() else None,
                                   "test item later than valid item": float(np.median(train_counts[~tied])) if (~tied).any() else None}
    out["median training users per target item"] = popularity
    out["share of users whose test item shares the valid item's timestamp"] = round(float(tied.mean()), 4)
    return out


# ---------------------------------------------------------------- part 2: checkpoints
def _variant(split: dict, how: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    hist, length = split["hist"].clone(), split["length"].clone()
    if how == "newest item dropped":
        hist[torch.arange(len(length)), length - 1] = 0
        length = (length - 1).clamp(min=1)
    elif how in ("history reversed", "history shuffled"):
        for i in range(len(length)):
            n = int(length[i])
            order = torch.arange(n - 1, -1, -1) if how == "history reversed" else torch.randperm(n, generator=generator)
            hist[i, :n] = hist[i, :n][order]
    return hist, length


def score_split(model: Any, split: dict, hist: torch.Tensor, length: torch.Tensor, batch: int = 256) -> torch.Tensor:
    from recbole.data.interaction import Interaction

    parts = []
    for start in range(0, len(length), batch):
        inter = Interaction({
            "user_id": split["user"][start : start + batch], "item_id_list": hist[start : start + batch],
            "item_length": length[start : start + batch], "item_id": split["target"][start : start + batch],
        })
        with torch.no_grad():
            scores = model.full_sort_predict(inter).view(len(inter), -1).float()
        scores[:, 0] = -np.inf  # padding item, as RecBole's evaluator does
        parts.append(scores)
    return torch.cat(parts)


def checkpoint_diagnostics(model: Any, valid: dict, test: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for how in ("as evaluated", "newest item dropped", "history reversed", "history shuffled"):
        generator = torch.Generator().manual_seed(0)
        row = {}
        for name, split in (("valid", valid), ("test", test)):
            hist, length = _variant(split, how, generator)
            scores = score_split(model, split, hist, length)
            row[name] = round(ndcg_at_k(ranks_of(scores, split["target"])), 4)
            if how == "as evaluated":
                top = torch.topk(scores, TOPK, dim=1).indices
                in_history = (top[:, :, None] == hist[:, None, :]).any(-1).float()
                row[f"{name}_top10_share_history"] = round(float(in_history.mean()), 4)
                masked = scores.clone()
                masked.scatter_(1, hist, -np.inf)
                row[f"{name}_history_masked"] = round(ndcg_at_k(ranks_of(masked, split["target"])), 4)
                row[f"{name}_users_short_after_mask"] = int((torch.isfinite(masked).sum(1) < TOPK).sum())
        row["test/valid"] = round(row["test"] / row["valid"], 3) if row["valid"] else None
        out[how] = row
    return out


# ---------------------------------------------------------------- part 3: test after every validation
def train_with_test_curve(model_name: str, dataset: str, config_files: list[str], overrides: dict) -> list[dict]:
    """Train ``model_name`` as the runner does and, after every validation, evaluate the test split
    with the current weights: if test/valid is low at every epoch, the drop is not the luck of
    picking the best of several noisy validations."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_logger, init_seed

    from recbole_letter.quick_start import build_config
    from recbole_letter.stages import resolve_stages

    config, spec = build_config(model_name, dataset, config_files, overrides)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    resolve_stages(spec.model_class, config, train_data._dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = spec.model_class(config, train_data._dataset).to(config["device"])
    trainer = spec.trainer_class(config, model)
    test = eval_rows(test_data)
    curve: list[dict] = []

    def after_validation(epoch_idx: int, valid_score: float) -> None:
        model.eval()
        test_ndcg = ndcg_at_k(ranks_of(score_split(model, test, test["hist"], test["length"]), test["target"]))
        curve.append({"epoch": epoch_idx + 1, "valid_ndcg@10": round(float(valid_score), 4),
                      "test_ndcg@10": round(test_ndcg, 4), "test/valid": round(test_ndcg / float(valid_score), 3)})
        print(json.dumps(curve[-1]), flush=True)
        model.train()

    trainer.fit(train_data, valid_data, saved=False, show_progress=False, callback_fn=after_validation)
    return curve


def markdown(result: dict[str, Any]) -> str:
    lines = ["### Data baselines (no training)", "", "| model | valid | test | test/valid | valid, history masked | test, history masked |",
             "|---|---|---|---|---|---|"]
    for name, row in result["data_baselines"].items():
        if isinstance(row, dict) and "valid" in row:
            lines.append(f"| {name} | {row['valid']:.4f} | {row['test']:.4f} | {row['test'] / row['valid']:.2f} | "
                         f"{row['valid_history_masked']:.4f} | {row['test_history_masked']:.4f} |")
    same = result["data_baselines"]["same_input"]
    for title, targets in same.items():
        lines += ["", f"{title} (NDCG@10):", "", "| target | all users | test item tied with valid item | test item later |", "|---|---|---|---|"]
        for target, row in targets.items():
            cells = (row["all"], row["test item tied with valid item"], row["test item later than valid item"])
            lines.append(f"| {target} | " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "Median number of training users of the target items:", "",
              "| target | all users | test item tied with valid item | test item later |", "|---|---|---|---|"]
    for target, row in result["data_baselines"]["median training users per target item"].items():
        cells = (row["all"], row["test item tied with valid item"], row["test item later than valid item"])
        lines.append(f"| {target} | " + " | ".join("n/a" if c is None else f"{c:.0f}" for c in cells) + " |")
    for label, diag in result["checkpoints"].items():
        lines += ["", f"### {label}", "", "| input | valid NDCG@10 | test NDCG@10 | test/valid |", "|---|---|---|---|"]
        for how, row in diag.items():
            lines.append(f"| {how} | {row['valid']:.4f} | {row['test']:.4f} | {row['test/valid']} |")
        base = diag["as evaluated"]
        lines.append(f"| history items masked from the ranking | {base['valid_history_masked']:.4f} | {base['test_history_masked']:.4f} | "
                     f"{base['test_history_masked'] / base['valid_history_masked']:.3f} |")
        lines.append(f"\nShare of top-10 slots that are history items: valid {base['valid_top10_share_history']:.3f}, "
                     f"test {base['test_top10_share_history']:.3f}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from recbole_letter.compat import load_data_and_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="RecBole checkpoints of sequential models on one split")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/valid_test_gap_<dataset>.json)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train", default=None, help="instead: train this model and test after every validation")
    parser.add_argument("--dataset", default="ml-100k", help="with --train")
    parser.add_argument("--config_files", default="", help="with --train: space-separated YAML files")
    args, extra = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    if args.train:
        from recbole_letter.cli import parse_overrides

        overrides = parse_overrides(extra)
        curve = train_with_test_curve(args.train, args.dataset, args.config_files.split(), overrides)
        out = Path(args.out) if args.out else RESULTS / f"valid_test_curve_{args.dataset}_{args.train}.json"
        out.write_text(json.dumps({"model": args.train, "dataset": args.dataset, "config_files": args.config_files.split(),
                                   "overrides": overrides, "curve": curve}, indent=1) + "\n")
        print(f"written: {out}")
        return 0
    if extra or not args.checkpoints:
        parser.error(f"give checkpoints (or --train MODEL); unknown arguments: {extra}")

    result: dict[str, Any] = {"checkpoints": {}}
    fingerprint = None
    for path in args.checkpoints:
        config, model, dataset, train_data, valid_data, test_data = load_data_and_model(path, log=False)
        model.eval()
        valid, test = eval_rows(valid_data), eval_rows(test_data)
        newest_in_test = test["hist"][torch.arange(len(test["length"])), test["length"] - 1]
        if not (torch.equal(valid["user"], test["user"]) and torch.equal(newest_in_test, valid["target"])):
            raise SystemExit(f"{path}: test histories do not end with the validation item; not a leave-one-out split")
        current = (config["dataset"], valid["target"].tolist(), test["target"].tolist())
        if fingerprint is None:
            fingerprint = current
            result["dataset"] = config["dataset"]
            result["users"] = len(valid["user"])
            result["data_baselines"] = data_baselines(train_data._dataset, valid, test, dataset.item_num)
        elif current != fingerprint:
            raise SystemExit(f"{path} was trained on another split than {args.checkpoints[0]}; compare like with like")
        label = model.result_label(config) if hasattr(model, "result_label") else config["model"]
        label = f"{label} ({Path(path).name})"
        result["checkpoints"][label] = checkpoint_diagnostics(model, valid, test)
        print(f"done: {label}", flush=True)

    out = Path(args.out) if args.out else RESULTS / f"valid_test_gap_{result['dataset']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    report = markdown(result)
    out.with_suffix(".md").write_text(report)
    print(report)
    print(f"written: {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
