"""Recommendation quality side by side: SASRec vs TIGER vs LETTER-TIGER on one split.

Every row runs through :func:`recbole_letter.quick_start.run_recbole_letter` with the same
config cascade (``overall.yaml`` < ``model/<M>.yaml`` < the budget file < row keys < CLI
``--key=value``), so split, history length, full ranking and metrics are identical; the rows'
split fingerprints are compared and stored. Output: a markdown table on stdout and
``benchmarks/results/quality_<dataset>[_u<N>][_paper].json``, rewritten after every row so a
killed run keeps the rows it finished.

Rows
----
Datasets with item text (ml-100k ships titles/genres)::

    Pop                            RecBole's Pop (counts of training positives): the floor
    SASRec                         RecBole's SASRec, CE loss
    TIGER (RQ-VAE IDs, tau 1.0)    item_tokenizer=RQVAE (RQ-VAE on text embeddings): original TIGER
    TIGER (LETTER IDs, tau 1.0)    item_tokenizer=LETTER (RQ-VAE + CF + diversity): LETTER-TIGER
    TIGER (LETTER IDs, tau 0.7)    the same IDs, ranking-guided loss tau 0.7

Datasets without item text (Instruments from ``../shared/data``: interactions, the LETTER paper's
semantic IDs and 32-d SASRec item embeddings, no text) cannot fit a tokenizer from text, so the
LETTER-TIGER rows use the published index (``--index``, default
``<shared>/data/<D>/<D>.index.json``); a TIGER row (RQ-VAE on CF embeddings only) is added when
``--item_embedding_file`` is given (e.g. ``<shared>/data/Instruments/Instruments-32d-sasrec.npy``).

Budgets
-------
``--config_files`` (default ``properties/quality_cpu.yaml``; ``--paper`` selects
``properties/quality_paper.yaml``) holds the budget every row shares. RecBole's own Trainer has no
per-epoch batch cap, so RecBole baselines get ``--baseline_epochs`` full epochs (CPU default 2,
``--paper``: the file's ``epochs`` with early stopping). Each row reports the training sequences
it saw and its wall time, so the budgets can be compared.

Convergence (``--converge``)
---------------------------
``properties/quality_converge.yaml``: every row trains until valid NDCG@10 has not improved for
``stopping_step`` (3) validations (TIGER: one validation per ``train_batches_per_epoch`` batches;
SASRec: per full epoch), the best checkpoint is tested. Adds a row with the item-level encoder
input (``encoder_input: items``). Writes ``quality_<dataset>_converge.json`` with every row's
learning curve (valid NDCG@10 against training sequences seen) and ``..._converge.png``.
``--jobs N`` runs N rows at once in separate processes (one torch thread each); the stage caches
are shared and locked, so each tokenizer is still fitted once. Every row records why it stopped
(``stopped``: ``patience`` = converged under the protocol; ``epoch cap``; or ``time limit`` from
``--row_minutes`` / ``--stop_by``, wall-clock limits that end training after the next validation
and test the best checkpoint so far, so a run on a shared machine ends on schedule and says which
rows it capped).

Examples::

    python benchmarks/quality.py --dataset=ml-100k --converge --jobs=5 --stop_by=2026-12-01T18:36
    python benchmarks/quality.py --dataset=ml-100k
    python benchmarks/quality.py --dataset=Instruments --max_users=2000
    python benchmarks/quality.py --dataset=Instruments --paper            # GPU, paper scale
    python benchmarks/quality.py --dataset=ml-100k --rows=SASRec,TIGER --epochs=8   # any override
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import logging
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from common import RESULTS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PROPERTIES = ROOT / "recbole_letter" / "properties"
METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
BASELINES = ("Pop", "SASRec")  # RecBole models: no train_batches_per_epoch, epochs from --baseline_epochs
# Pop counts the item column of its training batches; RecBole's default uniform negative would be
# counted too (noise), so the floor row counts positives only. One epoch counts everything.
POP_ROW = ("Pop", "Pop", {"train_neg_sample_args": None, "epochs": 1})

LOGGER = logging.getLogger("recbole_letter.quality")


# ---------------------------------------------------------------- data


def letter_source(dataset: str) -> Path:
    return SHARED / "data" / dataset


def prepare_dataset(dataset: str, data_path: Path, cache_root: Path) -> Path:
    """The folder holding ``<dataset>.inter``: the user's data_path, a bundled copy, or a
    conversion of ``<shared>/data/<dataset>`` (LETTER JSON) into ``data_path``."""
    from recbole_letter.data.bundled import DatasetNotFoundError, resolve_dataset_dir

    try:
        return resolve_dataset_dir(dataset, data_path, cache_root)
    except DatasetNotFoundError:
        src = letter_source(dataset)
        if not (src / f"{dataset}.inter.json").is_file():
            raise
    from recbole_letter.data.convert import convert_letter

    summary = convert_letter(src, dataset, data_path)
    print(f"converted {src} -> {summary.line()}", flush=True)
    return data_path / dataset


def subsample_users(src: Path, dataset: str, max_users: int, seed: int, out_root: Path) -> Path:
    """Copy of the atomic files keeping ``max_users`` random users with their whole sequences.

    Written once into ``out_root/<dataset>/`` (a folder named by the source, N and seed, so stage
    caches keyed on the data are reused by the next run); other atomic files are copied as is.
    """
    import numpy as np
    import pandas as pd

    target = out_root / dataset
    inter = target / f"{dataset}.inter"
    if inter.is_file():
        return target
    frame = pd.read_csv(src / f"{dataset}.inter", sep="\t", dtype=str, keep_default_na=False)
    user_col = next(c for c in frame.columns if c.split(":")[0] == "user_id")
    users = frame[user_col].unique()
    if max_users >= len(users):
        raise ValueError(f"--max_users={max_users} >= the {len(users)} users of {dataset}; drop the option")
    keep = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
    part = frame[frame[user_col].isin(set(keep))]
    tmp = out_root / f".{dataset}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    part.to_csv(tmp / f"{dataset}.inter", sep="\t", index=False)
    for file in src.iterdir():
        if file.is_file() and file.name != f"{dataset}.inter":
            shutil.copyfile(file, tmp / file.name)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    print(f"subsampled {max_users}/{len(users)} users: {len(part)}/{len(frame)} interactions -> {target}", flush=True)
    return target


def approx_train_rows(data_dir: Path, dataset: str) -> int:
    """RecBole's sequential training rows under leave-one-out: one per prefix, n_u - 3 per user."""
    import pandas as pd

    frame = pd.read_csv(data_dir / f"{dataset}.inter", sep="\t", dtype=str, usecols=[0])
    counts = frame.iloc[:, 0].value_counts()
    return int((counts - 3).clip(lower=0).sum())


# ---------------------------------------------------------------- rows


def build_rows(dataset: str, data_dir: Path, args: argparse.Namespace) -> list[tuple[str, str, dict]]:
    """(label, model, row-specific config) per row; Pop first, as the floor of every table."""
    item_level = bool(getattr(args, "converge", False))
    # --converge: the budget's learning rate is the generators'; SASRec keeps RecBole's default.
    rows: list[tuple[str, str, dict]] = [POP_ROW, ("SASRec", "SASRec", {"learning_rate": 0.001} if item_level else {})]
    taus = [1.0, 0.7]
    if (data_dir / f"{dataset}.item").is_file() and not args.index:
        rows.append((tiger_label("RQ-VAE IDs", 1.0), "TIGER", {"item_tokenizer": "RQVAE", "tau": 1.0}))
        for tau in taus:
            rows.append((tiger_label("LETTER IDs", tau), "TIGER", {"item_tokenizer": "LETTER", "tau": tau}))
        if item_level:
            rows.append((tiger_label("LETTER IDs", 1.0, "item-level input"), "TIGER",
                         {"item_tokenizer": "LETTER", "tau": 1.0, "encoder_input": "items"}))
        return rows
    index = Path(args.index) if args.index else letter_source(dataset) / f"{dataset}.index.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"{dataset} has no item text ({data_dir / (dataset + '.item')}) and no semantic-ID index "
            f"{index}. Fix: pass --index=<LETTER index.json> or add a .item file with text."
        )
    if args.item_embedding_file:
        rows.append(
            (tiger_label("RQ-VAE IDs on CF emb.", 1.0), "TIGER",
             {"item_tokenizer": "RQVAE", "item_embedding_file": str(Path(args.item_embedding_file).resolve()), "tau": 1.0})
        )
    for tau in taus:
        rows.append((tiger_label("published LETTER IDs", tau), "TIGER", {"item_tokenizer": str(index.resolve()), "tau": tau}))
    if item_level:
        rows.append((tiger_label("published LETTER IDs", 1.0, "item-level input"), "TIGER",
                     {"item_tokenizer": str(index.resolve()), "tau": 1.0, "encoder_input": "items"}))
    return rows


def split_rows(spec: str) -> set[str]:
    """``--rows`` labels: separated by ``;``, or by commas not followed by a space (labels such as
    ``TIGER (LETTER IDs, tau 1.0)`` contain ", ")."""
    parts = spec.split(";") if ";" in spec else re.split(r",(?! )", spec)
    return {p.strip() for p in parts if p.strip()}


def tiger_label(ids: str, tau: float, *extra: str) -> str:
    """Row label naming the semantic IDs and tau, as ``TIGER.result_label`` does for plain runs
    (``TIGER (LETTER IDs, tau 1.0)`` is LETTER-TIGER, ``TIGER (RQ-VAE IDs, tau 1.0)`` the original)."""
    return f"TIGER ({', '.join([ids, f'tau {float(tau)!r}', *extra])})"


# ---------------------------------------------------------------- reporting


def code_digest() -> dict[str, str]:
    """Which tokenizer/generator code produced the numbers (files change while others work)."""
    out: dict[str, str] = {}
    for sub in ("stages", "tokenization", "generation", "model"):
        digest = hashlib.sha256()
        for file in sorted((ROOT / "recbole_letter" / sub).glob("*.py")):
            digest.update(file.name.encode() + file.read_bytes())
        out[sub] = digest.hexdigest()[:12]
    try:
        out["git_head"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "recbole_letter"], capture_output=True, text=True
        ).stdout.split("\n")
        out["git_dirty"] = ",".join(sorted(line[3:] for line in dirty if line.strip()))
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


def tokenizer_report(dataset: str, config_files: list[str], config_dict: dict) -> dict[str, float]:
    """Collision / utilisation summary of the row's semantic IDs (cached stages: cheap)."""
    from recbole.data import create_dataset

    from recbole_letter.quick_start import build_config
    from recbole_letter.stages.item_tokenizer import build_report, load_or_fit_tokenizer

    config, _ = build_config("TIGER", dataset, config_files, config_dict)
    data = create_dataset(config)
    report = build_report(load_or_fit_tokenizer(config, data), config, data)
    wanted = ("collision_rate_before", "utilisation@L1", "utilisation@L2", "utilisation@L3", "entropy@L1", "n_levels")
    return {k: float(v) for k, v in report.items() if k in wanted or k.startswith("cf_")}


def table(rows: list[dict[str, Any]]) -> str:
    header = ["model", *(m.replace("recall", "Recall").replace("ndcg", "NDCG") for m in METRICS),
              "epochs", "train seqs", "stopped", "fit s", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        test = row.get("test_result") or {}
        cells = [row["label"]]
        cells += [f"{test[m]:.4f}" if m in test else "" for m in METRICS]
        cells += [str(row.get("epochs") or ""), str(row.get("train_sequences") or ""), str(row.get("stopped") or ""),
                  f"{row['fit_seconds']:.0f}" if row.get("fit_seconds") else "",
                  f"{row['wall_seconds']:.0f}" if row.get("wall_seconds") else ""]
        if row.get("error"):
            cells[1] = "error: " + row["error"][:120].replace("|", "/")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def _setup_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Setup keys on which two runs differ, wall-clock limits aside (a capped row says so itself)."""
    keys = (set(old) | set(new)) - {"time_limits"}
    return sorted(k for k in keys if old.get(k) != new.get(k))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Any other --key=value is a RecBole config override for every row.")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--paper", action="store_true", help="paper-scale budget (properties/quality_paper.yaml); for a GPU")
    p.add_argument("--converge", action="store_true",
                   help="train every row until valid NDCG@10 stops improving (properties/quality_converge.yaml); "
                        "learning curves + PNG")
    p.add_argument("--row_minutes", type=float, default=None,
                   help="wall-clock limit per row: after the first validation past it, training stops and the best "
                        "checkpoint is tested; the row is marked 'time limit' (capped, not converged)")
    p.add_argument("--stop_by", default=None,
                   help="local ISO time (e.g. 2026-12-01T18:35): every row stops training after its first validation "
                        "past it (marked 'time limit'), so a shared machine's run ends on schedule")
    p.add_argument("--jobs", type=int, default=1, help="rows run at once, each in its own process (one torch thread)")
    p.add_argument("--config_files", default=None, help="space-separated budget YAML files (default: quality_cpu.yaml)")
    p.add_argument("--baseline_epochs", type=int, default=None,
                   help="full epochs for RecBole baselines (default: 2 on the CPU budget, the file's epochs with --paper)")
    p.add_argument("--max_users", type=int, default=None, help="random users kept (whole sequences) for CPU runs")
    p.add_argument("--subsample_seed", type=int, default=0)
    p.add_argument("--index", default=None, help="semantic-ID index.json for the LETTER-TIGER rows (datasets without text)")
    p.add_argument("--item_embedding_file", default=None,
                   help="item embeddings .npy for a TIGER (RQVAE) row on a dataset without text")
    p.add_argument("--rows", default=None,
                   help="row labels to run, separated by ';' or ',' (others kept from an earlier JSON with the same setup)")
    p.add_argument("--data_path", default=None, help="where converted/subsampled atomic files go (default <checkpoint_dir>/datasets)")
    p.add_argument("--checkpoint_dir", default=str(ROOT / "saved"), help="checkpoints and stage caches")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/quality_<dataset>[_u<N>][_paper].json)")
    return p


def main(argv: list[str] | None = None) -> int:
    import recbole_letter  # noqa: F401  (compat shims before RecBole loads)
    from recbole_letter.cli import parse_overrides
    from recbole_letter.atomic import write_json_atomic
    from recbole_letter.quick_start import StopTraining, run_recbole_letter

    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = build_parser().parse_known_args(argv)
    overrides: dict[str, Any] = parse_overrides(extra)
    if args.stop_by:
        try:
            _dt.datetime.fromisoformat(args.stop_by)
        except ValueError:
            raise SystemExit(f"--stop_by={args.stop_by!r} is not an ISO time; use e.g. --stop_by=2026-12-01T18:35") from None
    if args.paper and args.converge:
        raise SystemExit("--paper and --converge are two budgets; pick one")
    budget = "quality_paper.yaml" if args.paper else "quality_converge.yaml" if args.converge else "quality_cpu.yaml"
    budget_files = args.config_files.split() if args.config_files else [str(PROPERTIES / budget)]
    full_budget = args.paper or args.converge
    baseline_epochs = args.baseline_epochs if args.baseline_epochs is not None else (None if full_budget else 2)
    checkpoint_dir = Path(args.checkpoint_dir).resolve()
    data_root = Path(args.data_path).resolve() if args.data_path else checkpoint_dir / "datasets"

    data_dir = prepare_dataset(args.dataset, data_root, checkpoint_dir)
    data_path = data_dir.parent
    if args.max_users:
        data_dir = subsample_users(
            data_dir, args.dataset, args.max_users, args.subsample_seed,
            data_root / f"{args.dataset}-u{args.max_users}-s{args.subsample_seed}",
        )
        data_path = data_dir.parent
    base = {"checkpoint_dir": str(checkpoint_dir), "data_path": str(data_path), **overrides}
    rows = build_rows(args.dataset, data_dir, args)
    wanted = split_rows(args.rows) if args.rows else None
    if wanted and not wanted <= {label for label, _, _ in rows}:
        raise SystemExit(f"--rows: unknown {sorted(wanted - {l for l, _, _ in rows})}; rows are {[l for l, _, _ in rows]}")

    suffix = (f"_u{args.max_users}" if args.max_users else "") + ("_paper" if args.paper else "") + (
        "_converge" if args.converge else ""
    )
    out = Path(args.out) if args.out else RESULTS / f"quality_{args.dataset}{suffix}.json"
    train_rows = approx_train_rows(data_dir, args.dataset)
    setup = {
        "dataset": args.dataset,
        "data_dir": str(data_dir),
        "max_users": args.max_users,
        "subsample_seed": args.subsample_seed if args.max_users else None,
        "budget_files": [str(Path(f).resolve().relative_to(ROOT)) if Path(f).resolve().is_relative_to(ROOT) else f for f in budget_files],
        "budget": _budget_keys(budget_files),
        "baseline_epochs": baseline_epochs,
        "overrides": overrides,
        "train_rows_approx": train_rows,
        "time_limits": {"row_minutes": args.row_minutes, "stop_by": args.stop_by},
    }
    previous: list[dict] = []
    if wanted and out.is_file():
        old = json.loads(out.read_text())
        differs = _setup_differences(old.get("setup") or {}, setup)
        if differs:  # the kept rows would belong to another protocol: refuse instead of dropping them
            print(f"error: --rows keeps the other rows of {out}, but its setup differs in {', '.join(differs)}; "
                  "rows run under another setup must not share a table. Fix: pass --out=<new file>, or rerun "
                  "every row without --rows.", file=sys.stderr)
            return 2
        previous = [r for r in old.get("results", []) if r["label"] not in wanted]
    payload: dict[str, Any] = {
        "setup": setup,
        "environment": {"python": platform.python_version(), "machine": platform.machine(), **_versions()},
        "code": code_digest(),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "results": list(previous),
    }
    print(f"{len(rows)} rows on {args.dataset} ({train_rows} training sequences/epoch); results -> {out}", flush=True)
    todo = [row for row in rows if not wanted or row[0] in wanted]
    if args.jobs > 1 and len(todo) > 1:
        payload["results"] += run_rows_in_processes(todo, argv, out, args.jobs)
        _finish(payload, out, write_json_atomic)
        todo = []
    for label, model, row_cfg in todo:
        cfg = {**base, **row_cfg}
        if model in BASELINES:
            cfg.pop("train_batches_per_epoch", None)
            if baseline_epochs is not None:
                cfg["epochs"] = baseline_epochs
        print(f"=== {label}: {model} {row_cfg}", flush=True)
        started = time.perf_counter()
        record: dict[str, Any] = {"label": label, "model": model, "row_config": row_cfg}
        per_epoch = _train_sequences({"epochs": 1}, cfg, budget_files, model, train_rows)
        curve: list[dict[str, Any]] = []

        def on_validation(epoch_idx: int, valid_score: float) -> None:
            curve.append({"epoch": int(epoch_idx) + 1, "train_sequences": (int(epoch_idx) + 1) * per_epoch,
                          "valid_ndcg@10": round(float(valid_score), 5),
                          "seconds": round(time.perf_counter() - started, 1)})
            if args.row_minutes and time.perf_counter() - started > 60 * args.row_minutes:
                raise StopTraining(f"time limit: --row_minutes={args.row_minutes}")
            if args.stop_by and _dt.datetime.now() > _dt.datetime.fromisoformat(args.stop_by):
                raise StopTraining(f"time limit: --stop_by={args.stop_by}")

        try:
            res = run_recbole_letter(model, args.dataset, budget_files, cfg, saved=True, epoch_callback=on_validation)
            record.update(res)
            record["train_sequences"] = _train_sequences(res, cfg, budget_files, model, train_rows)
            record["stopped"] = stop_reason(res, cfg, budget_files, model)
            if model == "TIGER":
                try:
                    record["tokenizer"] = tokenizer_report(args.dataset, budget_files, cfg)
                except Exception as exc:  # a report is a bonus, never a reason to lose the row
                    record["tokenizer"] = {"error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:
            LOGGER.error("row %s failed:\n%s", label, traceback.format_exc())
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["curve"] = curve
        record["wall_seconds"] = round(time.perf_counter() - started, 1)
        payload["results"].append(record)
        _finish(payload, out, write_json_atomic)
        print(table(payload["results"]), flush=True)
    if args.converge:
        print(f"learning curves: {plot_curves(payload, out.with_suffix('.png'))}", flush=True)
    if not payload.get("splits_identical", True):
        print("WARNING: rows ran on different splits; they are not comparable", flush=True)
    print(f"\n## {args.dataset}{suffix}: test results\n\n{table(payload['results'])}\n\nresults written to {out}")
    return 1 if any(r.get("error") for r in payload["results"]) else 0


def _finish(payload: dict[str, Any], out: Path, write_json_atomic) -> None:
    payload["splits_identical"] = len({r["split"] for r in payload["results"] if "split" in r}) <= 1
    payload["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    write_json_atomic(payload, out)


def run_rows_in_processes(rows: list[tuple[str, str, dict]], argv: list[str], out: Path, jobs: int) -> list[dict]:
    """Run each row as ``quality.py <same args> --rows=<label> --out=<part>``, ``jobs`` at a time;
    returns the rows' records in ``rows`` order (a failed process becomes an error record)."""
    parts = out.parent / f".{out.stem}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    base, skip = [], False
    for arg in argv:  # drop --jobs/--rows/--out, written as --flag=value or --flag value
        if skip:
            skip = False
        elif arg in ("--jobs", "--rows", "--out"):
            skip = True
        elif not arg.startswith(("--jobs=", "--rows=", "--out=")):
            base.append(arg)
    pending = [(i, label) for i, (label, _, _) in enumerate(rows)]
    running: list[tuple[int, str, Path, subprocess.Popen]] = []
    done: dict[int, dict] = {}
    while pending or running:
        while pending and len(running) < jobs:
            i, label = pending.pop(0)
            part = parts / f"row{i}.json"
            part.unlink(missing_ok=True)
            log = open(parts / f"row{i}.log", "w")
            cmd = [sys.executable, str(Path(__file__).resolve()), *base, f"--rows={label}", f"--out={part}"]
            print(f"started row {label!r} -> {part} (log {log.name})", flush=True)
            running.append((i, label, part, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(5)
        for entry in list(running):
            i, label, part, proc = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            found = json.loads(part.read_text())["results"] if part.is_file() else []
            done[i] = found[0] if found else {"label": label, "model": rows[i][1], "row_config": rows[i][2],
                                              "error": f"row process exited with {proc.returncode}; see {parts / f'row{i}.log'}"}
            print(f"finished row {label!r}", flush=True)
    return [done[i] for i in sorted(done)]


def plot_curves(payload: dict[str, Any], path: Path) -> Path:
    """Valid NDCG@10 against training sequences seen, one line per row (Pop: a flat line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in payload["results"]:
        curve = row.get("curve") or []
        if row.get("model") == "Pop" and row.get("best_valid_score") is not None:
            ax.axhline(row["best_valid_score"], color="grey", linestyle="--", label="Pop")
        elif curve:
            ax.plot([p["train_sequences"] for p in curve], [p["valid_ndcg@10"] for p in curve], marker=".", label=row["label"])
    ax.set_xlabel("training sequences seen")
    ax.set_ylabel("valid NDCG@10")
    ax.set_title(f"{payload['setup']['dataset']}: training until valid NDCG@10 stops improving")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stop_reason(res: dict, cfg: dict, files: list[str], model: str) -> str:
    """Why the row's training ended: ``patience`` (valid NDCG@10 stopped improving: converged
    under the protocol), ``epoch cap`` (ran all ``epochs``: still improving, so capped) or the
    time limit (``--row_minutes``). Pop trains one counting epoch: ``one pass``."""
    if res.get("stopped_by_callback"):
        return str(res["stopped_by_callback"])
    if model == "Pop":
        return "one pass"
    cap = int({**_budget_keys(files), **cfg}.get("epochs") or 0)
    return "epoch cap" if cap and (res.get("epochs") or 0) >= cap else "patience"


def _budget_keys(files: list[str]) -> dict[str, Any]:
    import yaml

    merged: dict[str, Any] = {}
    for file in files:
        merged.update(yaml.safe_load(Path(file).read_text()) or {})
    return merged


def _train_sequences(res: dict, cfg: dict, files: list[str], model: str, train_rows: int) -> int | None:
    """Training sequences seen: epochs x (capped) batches x batch size."""
    epochs = res.get("epochs")
    if not epochs:
        return None
    budget = {**_budget_keys(files), **cfg}
    batch = int(budget.get("train_batch_size") or 2048)
    per_epoch = train_rows
    cap = budget.get("train_batches_per_epoch")
    if model not in BASELINES and cap not in (None, "~", "None"):
        per_epoch = min(train_rows, int(cap) * batch)
    return int(epochs) * per_epoch


def _versions() -> dict[str, str]:
    import recbole
    import torch

    return {"torch": torch.__version__, "recbole": recbole.__version__}


if __name__ == "__main__":
    sys.exit(main())
