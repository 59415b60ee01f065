"""Same command, same seed: are the metrics the same with a cold and a warm stage cache?

Runs one CLI command twice against a fresh ``checkpoint_dir``: the first run computes every stage
(text embeddings, LightGCN CF embeddings, tokenizer), the second finds them in the cache. Prints
both runs' test metrics side by side and writes a markdown table + JSON.

    python benchmarks/cache_determinism.py --label after -- \
        --model=TIGER --dataset=ml-100k --config_files=recbole_letter/properties/demo.yaml --epochs=1

``--entry`` runs another checkout's ``run_recbole_letter.py`` (e.g. the code before the fix), so
before/after numbers come from the same script.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recbole_letter.atomic import write_json_atomic, write_text_atomic  # noqa: E402

_RESULTS_LINE = re.compile(r"results written to (\S+)")


def run_once(entry: Path, args: list[str], checkpoint_dir: Path, log: Path) -> tuple[dict[str, float], float]:
    """One CLI run; its test metrics (from the results JSON it printed) and wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(entry), *args, f"--checkpoint_dir={checkpoint_dir}"],
        cwd=checkpoint_dir.parent, env=env, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - started
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr, encoding="utf-8")
    match = _RESULTS_LINE.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        raise SystemExit(f"run failed (exit {proc.returncode}); see {log}")
    results = json.loads(Path(match.group(1)).read_text(encoding="utf-8"))["results"]
    return {k: float(v) for k, v in results[0]["test_result"].items()}, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", type=Path, default=REPO / "run_recbole_letter.py", help="run_recbole_letter.py to run")
    parser.add_argument("--label", default="current", help="name of this measurement in the output files")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the CLI arguments (no --checkpoint_dir)")
    args = parser.parse_args(argv)
    command = [a for a in args.command if a != "--"]
    with tempfile.TemporaryDirectory(prefix="cache-determinism-") as tmp:
        saved = Path(tmp) / "saved"
        cold, cold_s = run_once(args.entry, command, saved, Path(tmp) / "cold.log")
        warm, warm_s = run_once(args.entry, command, saved, Path(tmp) / "warm.log")
    metrics = sorted(cold)
    identical = cold == warm
    lines = [
        f"### cold vs warm stage cache ({args.label})", "",
        f"`{' '.join(command)}`", "",
        "| run | seconds | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
        f"| cold | {cold_s:.0f} | " + " | ".join(f"{cold[m]:.4f}" for m in metrics) + " |",
        f"| warm | {warm_s:.0f} | " + " | ".join(f"{warm[m]:.4f}" for m in metrics) + " |",
        "", f"identical: {identical}",
    ]
    table = "\n".join(lines)
    print(table)
    stem = args.out / f"cache_determinism_{args.label}"
    write_text_atomic(stem.with_suffix(".md"), table + "\n")
    write_json_atomic(
        {"label": args.label, "command": command, "entry": str(args.entry), "cold": cold, "warm": warm,
         "cold_seconds": round(cold_s, 1), "warm_seconds": round(warm_s, 1), "identical": identical},
        stem.with_suffix(".json"), trailing_newline=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
