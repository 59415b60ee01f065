"""What a study leaves behind: the trial table, ``trials.json``, ``best_config.yaml``, a plot of the
validation curves, and an estimate of what Ray cost per trial.

Rows come from Ray's ``ResultGrid``, which after ``--tune_resume`` holds the trials of every
session, so all outputs always cover the whole study.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from recbole_letter.atomic import atomic_open
from recbole_letter.hyper import HyperParam
from recbole_letter.tables import format_cell, markdown_table
from recbole_letter.tuning.trial import METRIC, plain

# Row status: finished; stopped early by the scheduler; crashed; cut off by an interrupt (rerun on resume).
STATUSES = ("ok", "stopped", "error", "unfinished")


def describe_error(error: Any) -> str | None:
    """One line ``Type: message`` for a failed trial (Ray wraps the original in its own errors)."""
    if error is None:
        return None
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1:  # a traceback rendered as text: its last line is "Type: message"
        return lines[-1][:500]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:500]


def _status(metrics: Mapping[str, Any], error: str | None) -> str:
    if error:
        return "error"
    if metrics.get("finished"):
        return "ok"
    # Ray marks the last result of a trial it stopped (scheduler decision) as done; a trial cut
    # off by an interrupt has no such result and is run again by --tune_resume.
    return "stopped" if metrics.get("done") else "unfinished"


def collect_rows(grid: Any, space: Sequence[HyperParam], fit_started: float) -> list[dict[str, Any]]:
    """One JSON-able row per trial from Ray's ResultGrid (finished, stopped, failed or unfinished)."""
    names = [p.name for p in space]
    rows: list[dict[str, Any]] = []
    for index in range(len(grid)):
        result = grid[index]
        metrics = dict(result.metrics or {})
        config = plain(dict(result.config or {}))
        if isinstance(config.get("train_loop_config"), dict):  # a data-parallel trial (Ray Trainer)
            config = config["train_loop_config"]
        path = getattr(result, "path", None) or getattr(result, "log_dir", None)
        error = describe_error(result.error)
        entered, exited = metrics.get("entered_at"), metrics.get("exited_at")
        rows.append(
            {
                "trial": str(metrics.get("trial_id") or Path(str(path)).name),
                "status": _status(metrics, error),
                "params": {n: config.get(n) for n in names},
                METRIC: metrics.get(METRIC),
                "valid": plain(metrics.get("valid")) or None,
                "test": plain(metrics.get("test")) or None,
                "epochs": metrics.get("epochs") or metrics.get("epoch"),
                "valid_curve": plain(metrics.get("valid_curve")) or [],
                "fit_seconds": metrics.get("fit_seconds"),
                "run_seconds": metrics.get("run_seconds"),
                "entered_at": entered,
                "entered_s": round(entered - fit_started, 2) if isinstance(entered, float) else None,
                "exited_s": round(exited - fit_started, 2) if isinstance(exited, float) else None,
                "checkpoint": metrics.get("checkpoint"),
                "ranks": metrics.get("ranks"),
                "error": error,
                "ray_dir": str(path) if path else None,
            }
        )
    return rows


def score(row: Mapping[str, Any]) -> float | None:
    """The row's best validation score, None when it has none (crashed before validating)."""
    value = row.get(METRIC)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def sort_rows(rows: Sequence[dict[str, Any]], bigger: bool) -> list[dict[str, Any]]:
    """Best validation score first (trials stopped early included); trials without a score last."""

    def key(row: Mapping[str, Any]) -> tuple[int, float]:
        value = score(row)
        if value is None:
            return (1, 0.0)
        return (0, -value if bigger else value)

    return sorted(rows, key=key)


def best_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """First finished trial of sorted ``rows`` (a stopped trial has no test result to stand on)."""
    return next((r for r in rows if r["status"] == "ok" and score(r) is not None), None)


def trials_table(rows: Sequence[Mapping[str, Any]], names: Sequence[str], valid_metric: str) -> str:
    """Markdown table of sorted trial rows: params, best valid score, test score of the same metric.

    Parameter values keep 4 significant digits (a learning rate of 0.00123 must not print as
    0.0012); scores get the shared formatter's 4 decimals, like the runner's results table.
    """
    failed = any(r.get("error") for r in rows)
    header = ["rank", "trial", "status", *names, f"valid {valid_metric}", f"test {valid_metric}", "epochs"]
    header += ["error"] if failed else []
    metric_key = valid_metric.lower()
    body = []
    for rank, row in enumerate(rows, start=1):
        test = (row.get("test") or {}).get(metric_key)
        cells: list[Any] = [rank, row["trial"], row["status"]]
        cells += [format_cell(row["params"].get(n), ".4g") for n in names]
        cells += [score(row), None if test is None else float(test), row.get("epochs")]
        cells += [format_cell(row.get("error"), max_chars=200)] if failed else []
        body.append(cells)
    return markdown_table(header, body)


def best_config_yaml(
    study: Any, row: Mapping[str, Any], n_trials: int, path: Path
) -> str:
    """YAML for ``--config_files``: the command-line overrides, then the best trial's tuned keys."""
    import yaml

    values = {**study.best_config_overrides, **plain(dict(row["params"]))}
    test = (row.get("test") or {}).get(study.valid_metric.lower())
    user_files = " ".join(os.path.relpath(f) for f in study.job.config_files)
    header = [
        f"# Best of {n_trials} trials ({study.experiment}, {study.algorithm} search): trial {row['trial']}, "
        f"valid {study.valid_metric}={score(row):.4f}"
        + (f", test {study.valid_metric}={float(test):.4f}" if test is not None else ""),
        f"# Search space: {study.params_file}. Rerun with:",
        f"#   python run_recbole_letter.py --model={study.model} --dataset={study.dataset} "
        f"--config_files=\"{(user_files + ' ') if user_files else ''}{os.path.relpath(path)}\"",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(values, sort_keys=False, default_flow_style=None)


def plot_trials(rows: Sequence[Mapping[str, Any]], valid_metric: str, title: str, path: str | os.PathLike) -> Path:
    """PNG of every trial's validation score per epoch: ASHA's cuts are lines that end early.

    The best finished trial is drawn thick and labelled; a trial stopped early ends in an ``x``, a
    crashed or unfinished one in an ``o``. Uses the Agg canvas directly (no pyplot state) and an
    atomic write, like the tokenizer's usage plot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    best = best_row(rows)
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    drawn = 0
    for row in rows:
        curve = [point for point in row.get("valid_curve") or [] if len(point) == 2]
        if not curve:
            continue
        epochs, scores = zip(*curve)
        is_best = best is not None and row["trial"] == best["trial"]
        values = ", ".join(f"{k}={format_cell(v, '.3g')}" for k, v in (row.get("params") or {}).items())
        label = f"best: {row['trial']} ({values})" if is_best else None
        (line,) = ax.plot(epochs, scores, linewidth=2.6 if is_best else 1.0, alpha=1.0 if is_best else 0.6,
                          zorder=3 if is_best else 2, label=label)
        marker = {"stopped": "x", "error": "o", "unfinished": "o"}.get(str(row.get("status")))
        if marker:
            ax.plot(epochs[-1:], scores[-1:], marker=marker, color=line.get_color(), linestyle="none")
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no trial reached a validation", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"valid {valid_metric}")
    ax.set_title(f"{title} ({drawn} of {len(rows)} trials validated; x = stopped early)", fontsize=9)
    ax.grid(alpha=0.3)
    if best is not None and best.get("valid_curve"):
        ax.legend(fontsize=8)
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    return path


def timing_summary(rows: Sequence[Mapping[str, Any]], wall: float, slots: int, init_seconds: float) -> dict[str, Any]:
    """Ray's cost per trial: slot-seconds not spent inside the trials' own runs, nor idle at the end.

    ``rows`` are the trials that ran during this ``Tuner.fit`` (a resumed study's earlier trials
    do not count). ``run_seconds`` is timed inside each trial around ``run_recbole_letter`` (data
    loading, training, validation, test); ``entered_s``/``exited_s`` are the trial's entry and exit,
    in seconds since ``Tuner.fit`` started. Of ``wall * slots`` slot-seconds, the trials' runs use
    ``sum(run)``; once the last trials are running, the slots that have no trial left sit idle
    until the study ends, and that time is not Ray's either. What remains, divided by the number
    of trials, is Ray's overhead per trial: starting worker processes and their imports,
    scheduling, reporting and writing results. With one trial per slot at the end, the last
    ``slots`` exits are the idle slots' last trials.
    """
    runs = [float(r["run_seconds"]) for r in rows if isinstance(r.get("run_seconds"), (int, float))]
    summary: dict[str, Any] = {
        "ray_init_seconds": round(init_seconds, 2),
        "tuner_fit_seconds": round(wall, 2),
        "slots": slots,
        "trials": len(rows),
        "finished_trials": len(runs),
        "sum_run_seconds": round(sum(runs), 2),
    }
    entered = [r.get("entered_s") for r in rows]
    exited = [r.get("exited_s") for r in rows]
    if runs and len(runs) == len(rows) and all(isinstance(t, (int, float)) for t in entered + exited):
        idle = sum(max(0.0, wall - t) for t in sorted(exited)[-slots:])
        summary["first_trial_start_seconds"] = round(min(entered), 2)
        summary["idle_slot_seconds_at_end"] = round(idle, 2)
        summary["overhead_per_trial_seconds"] = round((wall * slots - sum(runs) - idle) / len(rows), 2)
    return summary
