"""``--tune``: the .hyper parser, the result table/YAML helpers, and one real 2-trial Ray search.

One torch thread and a clean ``sys.argv`` come from ``conftest.py``.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

import recbole_letter  # noqa: F401  (compat shims before RecBole/Ray)
from ray.tune import Callback
from recbole_letter.hyper import HyperFileError, parse_hyper_file, parse_hyper_text, parse_line
from recbole_letter.registry import PROPERTIES_DIR


# ----------------------------------------------------------------------------- parser


def test_each_distribution_parses_with_recbole_semantics() -> None:
    params = parse_hyper_text(
        """
        # a comment line, then a blank one

        learning_rate loguniform -8,0
        hidden_size choice [64, 128]
        dropout_prob uniform 0.1,0.5   # trailing comment
        n_layers quniform 1,3,1
        weight_decay quniform 0.0,0.1,0.05
        n_heads randint 1,4
        seed randint 3
        loss_type choice ['CE', 'BPR']  # comment after a list
        tag choice ['a#b']
        """
    )
    by = {p.name: p for p in params}
    assert [p.name for p in params][:3] == ["learning_rate", "hidden_size", "dropout_prob"]
    lr = by["learning_rate"]
    assert lr.kind == "loguniform" and (lr.low, lr.high) == (-8.0, 0.0)
    assert lr.value_range == pytest.approx((math.exp(-8), 1.0))  # natural-log exponents, like hyperopt
    assert by["hidden_size"].choices == (64, 128)
    assert (by["dropout_prob"].low, by["dropout_prob"].high) == (0.1, 0.5)
    assert by["n_layers"].integer and by["n_layers"].q == 1
    assert not by["weight_decay"].integer and by["weight_decay"].q == 0.05
    assert (by["n_heads"].low, by["n_heads"].high) == (1, 4) and by["n_heads"].value_range == (1, 3)
    assert (by["seed"].low, by["seed"].high) == (0, 3)
    assert by["loss_type"].choices == ("CE", "BPR")
    assert by["tag"].choices == ("a#b",)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("learning_rate loguniform", "needs three fields"),
        ("learning_rate gaussian 0,1", "unknown type 'gaussian'"),
        ("learning_rate loguniform 0", "expected learning_rate loguniform low,high"),
        ("learning_rate uniform 0.5,0.1", "must be smaller than high"),
        ("learning_rate uniform a,1", "'a' is not a number"),
        ("learning_rate uniform 0,inf", "not finite"),
        ("hidden_size choice [64,", "not a Python literal list"),
        ("hidden_size choice []", "non-empty list"),
        ("hidden_size choice 64", "non-empty list"),
        ("hidden_size choice __import__('os')", "not a Python literal list"),
        ("n_layers quniform 1,3", "low,high,q"),
        ("n_layers quniform 1,3,0", "must be positive"),
        ("n_heads randint 1.5,4", "must be integers"),
        ("n_heads randint 4,1", "must be smaller than high"),
        ("bad-name choice [1]", "is not a config key"),
    ],
)
def test_bad_lines_give_one_line_errors_with_location_and_fix(line: str, fragment: str) -> None:
    with pytest.raises(HyperFileError) as info:
        parse_line(line, "space.hyper:3")
    message = str(info.value)
    assert fragment in message
    assert message.startswith("space.hyper:3: ") and "Fix:" in message and "\n" not in message


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(HyperFileError, match="defined twice"):
        parse_hyper_text("a choice [1]\na choice [2]\n", "x.hyper")
    with pytest.raises(HyperFileError, match="no parameters found"):
        parse_hyper_text("# only a comment\n", "x.hyper")
    with pytest.raises(HyperFileError, match="not found"):
        parse_hyper_file(tmp_path / "missing.hyper")


@pytest.mark.parametrize("model", ["SASRec", "LETTER", "TIGER"])
def test_shipped_hyper_files_parse_and_name_existing_keys(model: str) -> None:
    from recbole_letter.quick_start import build_config  # noqa: F401  (imports RecBole)
    params = parse_hyper_file(PROPERTIES_DIR / "hyper" / f"{model}.hyper")
    assert params
    model_yaml = PROPERTIES_DIR / "model" / f"{model}.yaml"
    if model_yaml.is_file():  # ours: every tuned key has a documented default
        defaults = yaml.safe_load(model_yaml.read_text())
        assert {p.name for p in params} <= set(defaults)


def test_ray_domains_match_hyperopt_distributions() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    from recbole_letter.tuning.search import ray_domain

    params = {p.name: p for p in parse_hyper_text(
        "lr loguniform -8,0\nh choice [16,32]\nd uniform 0.1,0.5\nq quniform 16,64,16\nf quniform 0,1,0.25\nr randint 1,3\n"
    )}
    rng = 0
    lr = ray_domain(params["lr"])
    assert isinstance(lr, Float) and lr.lower == pytest.approx(math.exp(-8)) and lr.upper == pytest.approx(1.0)
    assert isinstance(ray_domain(params["h"]), Categorical)
    samples = {name: ray_domain(p).sample(size=200, random_state=rng) for name, p in params.items()}
    assert all(math.exp(-8) <= v <= 1.0 for v in samples["lr"])
    assert set(samples["h"]) == {16, 32}
    assert all(0.1 <= v <= 0.5 for v in samples["d"])
    assert isinstance(ray_domain(params["q"]), Integer) and set(int(v) for v in samples["q"]) <= {16, 32, 48, 64}
    assert all(float(v / 0.25).is_integer() and 0 <= v <= 1 for v in samples["f"])
    assert set(int(v) for v in samples["r"]) == {1, 2}  # high excluded


# ----------------------------------------------------------------------------- helpers


def _row(trial: str, status: str, score: float | None, test: float | None = None, error: str | None = None) -> dict:
    return {
        "trial": trial, "status": status, "params": {"hidden_size": 16, "learning_rate": 0.00123456},
        "best_valid_score": score, "test": None if test is None else {"ndcg@10": test},
        "epochs": 1, "error": error,
    }


def test_rows_sort_by_validation_and_best_is_a_finished_trial() -> None:
    from recbole_letter.tuning.report import best_row, sort_rows, trials_table

    rows = [_row("a", "ok", 0.2, 0.1), _row("b", "error", None, error="ValueError: x"), _row("c", "stopped", 0.5),
            _row("d", "ok", 0.3, 0.25)]
    ordered = sort_rows(rows, bigger=True)
    assert [r["trial"] for r in ordered] == ["c", "d", "a", "b"]
    assert best_row(ordered)["trial"] == "d"
    assert [r["trial"] for r in sort_rows(rows, bigger=False)] == ["a", "d", "c", "b"]
    table = trials_table(ordered, ["hidden_size", "learning_rate"], "NDCG@10").splitlines()
    assert table[0] == "| rank | trial | status | hidden_size | learning_rate | valid NDCG@10 | test NDCG@10 | epochs | error |"
    assert table[3].startswith("| 2 | d | ok | 16 | 0.001235 | 0.3000 | 0.2500 | 1 |")
    assert table[-1].endswith("| ValueError: x |")


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recbole_letter.tuning.study import absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "emb.npy").write_bytes(b"")
    fixed = absolute_paths({"data_path": "data/", "item_embedding_file": "emb.npy", "text_encoder": "minilm",
                            "item_tokenizer": "LETTER", "missing_file": "nothing/here.npy"})
    assert fixed == {
        "data_path": str(tmp_path / "data"),
        "checkpoint_dir": str(tmp_path / "saved"),
        "item_embedding_file": str(tmp_path / "emb.npy"),
    }


def test_trial_params_precedence_and_per_trial_settings(tmp_path: Path) -> None:
    from recbole_letter.tuning.trial import TrialJob, trial_params

    job = TrialJob("SASRec", "tiny", (), {"learning_rate": "0.1", "epochs": "3"}, str(tmp_path), str(tmp_path / "t"),
                   saved=True, cpus_per_trial=2.0, gpus_per_trial=0.0)
    params = trial_params(job, {"learning_rate": np.float64(0.01), "layers": (1, 2)}, tmp_path / "t" / "x", [])
    assert params["learning_rate"] == 0.01 and type(params["learning_rate"]) is float  # sampled beats overrides
    assert params["layers"] == [1, 2] and params["epochs"] == "3"
    assert params["checkpoint_dir"] == str(tmp_path / "t" / "x") and params["gpu_id"] == "" and params["torch_num_threads"] == 2
    gpu_job = TrialJob("SASRec", "tiny", (), {"torch_num_threads": "1"}, str(tmp_path), str(tmp_path), True, 1.0, 1.0)
    gpu_params = trial_params(gpu_job, {}, tmp_path, [3])
    assert gpu_params["gpu_id"] == "3" and gpu_params["torch_num_threads"] == "1"  # the user's setting wins


def test_prepare_study_makes_paths_absolute_and_types_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recbole_letter.cli import build_parser
    from recbole_letter.tuning.study import documented_keys, prepare_study

    monkeypatch.chdir(tmp_path)
    _tiny_dataset(tmp_path / "data")
    (tmp_path / "s.hyper").write_text("learning_rate loguniform -8,-4\n")
    (tmp_path / "extra.yaml").write_text("epochs: 1\n")
    args = build_parser().parse_args(["--model=SASRec", "--dataset=tiny", "--tune", "--params_file=s.hyper"])
    study = prepare_study(args, ["SASRec"], ["extra.yaml"], {"data_path": "data", "topk": "[5,10]"})
    assert study.job.config_files == (str(tmp_path / "extra.yaml"),)
    assert study.job.overrides["data_path"] == str(tmp_path / "data")
    assert study.job.checkpoint_dir == str(tmp_path / "saved") and study.storage == str(tmp_path / "saved" / "ray_results")
    assert study.best_config_overrides == {"data_path": "data", "topk": [5, 10]}
    assert study.valid_metric == "NDCG@10" and study.bigger
    assert {"alpha", "beta", "tokenizer_learning_rate", "tau"} <= documented_keys()  # TIGER may tune LETTER keys
    # a continuous space defaults to random search with 4 planned, distinct configurations
    assert (study.algorithm, study.n_trials, len(study.planned)) == ("random", 4, 4)
    assert len({c["learning_rate"] for c in study.planned}) == 4


def test_saved_study_loads_back_and_resume_rejects_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recbole_letter.cli import build_parser
    from recbole_letter.tuning import TuningError
    from recbole_letter.tuning.study import load_study, prepare_study, resume_study, save_study

    monkeypatch.chdir(tmp_path)
    _tiny_dataset(tmp_path / "data")
    (tmp_path / "s.hyper").write_text("hidden_size choice [8,16]  # two sizes\nn_layers choice [1,2]\n")
    args = build_parser().parse_args(["--model=SASRec", "--dataset=tiny", "--tune", "--params_file=s.hyper"])
    study = prepare_study(args, ["SASRec"], None, {"data_path": "data", "epochs": "1"})
    assert (study.algorithm, study.n_trials) == ("grid", 4)  # every dimension a choice: grid by default
    save_study(study)
    (tmp_path / "s.hyper").write_text("hidden_size choice [999]\n")  # editing the file cannot change the study
    loaded = load_study(study.experiment_dir)
    assert [(p.name, p.choices) for p in loaded.space] == [("hidden_size", (8, 16)), ("n_layers", (1, 2))]
    assert loaded.job == study.job and loaded.planned == study.planned and loaded.ray_dir == study.ray_dir
    assert loaded.best_config_overrides == {"data_path": "data", "epochs": 1}

    def resume(*argv: str, models=(), overrides=None):
        return resume_study(build_parser().parse_args([f"--tune_resume={study.experiment_dir}", *argv]),
                            list(models), overrides or {})

    assert resume(models=["SASRec"]).sessions == 2
    for argv, models, overrides, flag in [
        (["--tune_samples=2"], (), None, "--tune_samples"),
        (["--params_file=s.hyper"], (), None, "--params_file"),
        ([], ["GRU4Rec"], None, "--model"),
        (["--dataset=ml-100k"], (), None, "--dataset"),
        ([], (), {"epochs": "3"}, "--epochs"),
    ]:
        with pytest.raises(TuningError, match=f"cannot change {flag}.*Fix: drop those flags"):
            resume(*argv, models=models, overrides=overrides)
    with pytest.raises(TuningError, match="no study.json there.*printed as 'study:'"):
        load_study(tmp_path)
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "tuner.pkl").write_bytes(b"")
    with pytest.raises(TuningError, match="that is Ray's results folder"):
        load_study(tmp_path / "ray")


# ----------------------------------------------------------------------------- search algorithms


def test_grid_plans_every_combination_exactly_once() -> None:
    from recbole_letter.tuning import TuningError
    from recbole_letter.tuning.search import grid_configs, plan_trials

    space = parse_hyper_text("a choice [1,2]\nb choice ['x','y','z']\n")
    assert plan_trials(space, None, None) == ("grid", 6)
    configs = grid_configs(space)
    assert configs == [{"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]
    with pytest.raises(TuningError, match="grid has 6 combinations.*Fix: drop --tune_samples"):
        plan_trials(space, "grid", 4)
    mixed = parse_hyper_text("a choice [1,2]\nlr loguniform -8,-4\n")
    assert plan_trials(mixed, None, None) == ("random", 4)
    with pytest.raises(TuningError, match=r"lr \(loguniform\) is not.*Fix: use --tune_algo=random"):
        plan_trials(mixed, "grid", None)
    assert plan_trials(mixed, "tpe", 3) == ("tpe", 3)


def test_random_search_never_repeats_when_the_space_allows() -> None:
    from recbole_letter.tuning import TuningError
    from recbole_letter.tuning.search import plan_trials, random_configs, space_size

    discrete = parse_hyper_text("a choice [1,2]\nr randint 0,2\nq quniform 16,32,16\n")
    assert space_size(discrete) == 8
    for seed in range(10):  # 8 draws from 8 configurations: with replacement ~all seeds repeat one
        configs = random_configs(discrete, 8, seed)
        assert len({json.dumps(c, sort_keys=True) for c in configs}) == 8
        assert all(c["q"] in (16, 32) and type(c["q"]) is int and c["r"] in (0, 1) for c in configs)
    assert random_configs(discrete, 5, 3) == random_configs(discrete, 5, 3)  # seeded: same command, same trials
    with pytest.raises(TuningError, match="only 8 distinct configurations.*Fix: --tune_samples=8"):
        plan_trials(discrete, "random", 9)
    mixed = parse_hyper_text("h choice [16,32]\nlr loguniform -8,-4\n")
    assert space_size(mixed) is None and plan_trials(mixed, "random", 50) == ("random", 50)
    assert len({json.dumps(c, sort_keys=True) for c in random_configs(mixed, 50, 0)}) == 50


def test_algorithms_build_ray_searchers_with_the_concurrency_limit() -> None:
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.hyperopt import HyperOptSearch

    from recbole_letter.tuning.search import default_initial_points, grid_configs, search_algorithm

    space = parse_hyper_text("h choice [16,32]\nlr loguniform -8,-4\n")
    alg, param_space, limit = search_algorithm("tpe", space, [], 8, 0, None, 2)
    assert isinstance(alg, HyperOptSearch) and set(param_space) == {"h", "lr"} and limit == 2
    assert [default_initial_points(n) for n in (1, 3, 8, 100)] == [1, 1, 4, 20]
    grid = parse_hyper_text("h choice [16,32]\n")
    alg, _, limit = search_algorithm("grid", grid, grid_configs(grid), 2, 0, None, 1)
    # Ray ignores TuneConfig's limit for a BasicVariantGenerator: it gets its own
    assert isinstance(alg, BasicVariantGenerator) and alg.max_concurrent == 1 and limit is None


def test_timing_summary_separates_ray_overhead_from_idle_slots() -> None:
    from recbole_letter.tuning.report import timing_summary

    # 2 slots, 3 trials: a and b start after 5 s of worker start-up, c reuses a's slot 0.1 s later;
    # b's slot is idle from 60 s until the study ends at 100 s.
    rows = [
        {"run_seconds": 50.0, "entered_s": 5.0, "exited_s": 55.0},
        {"run_seconds": 55.0, "entered_s": 5.0, "exited_s": 60.0},
        {"run_seconds": 44.9, "entered_s": 55.1, "exited_s": 100.0},
    ]
    summary = timing_summary(rows, wall=100.0, slots=2, init_seconds=3.0)
    assert summary["idle_slot_seconds_at_end"] == 40.0 and summary["first_trial_start_seconds"] == 5.0
    assert summary["overhead_per_trial_seconds"] == pytest.approx((200 - 149.9 - 40) / 3, abs=0.01)
    assert "overhead_per_trial_seconds" not in timing_summary([{"run_seconds": None}], 10.0, 1, 0.0)


def test_plot_draws_every_validated_trial(tmp_path: Path) -> None:
    from matplotlib.image import imread

    from recbole_letter.tuning.report import plot_trials

    rows = [
        {**_row("a", "ok", 0.3, 0.2), "valid_curve": [[1, 0.1], [2, 0.2], [3, 0.3]]},
        {**_row("b", "stopped", 0.15), "valid_curve": [[1, 0.15]]},
        {**_row("c", "error", None, error="ValueError: x"), "valid_curve": []},
    ]
    path = plot_trials(rows, "NDCG@10", "SASRec on tiny", tmp_path / "trials.png")
    image = imread(path)
    assert image.shape[:2] == (420, 700)  # 7 x 4.2 inches at 100 dpi
    # the best trial's thick line and the stopped trial's marker put colour on a white canvas
    assert (image[..., :3] < 0.9).any(axis=-1).mean() > 0.01
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, no temp file left


def test_describe_error_unwraps_ray_tracebacks() -> None:
    from recbole_letter.tuning.report import describe_error

    assert describe_error(None) is None
    assert describe_error(ValueError("bad size")) == "ValueError: bad size"
    text = "ray::ImplicitFunc.train()\n  File 'x.py', line 1\nValueError: The hidden size (-5) is bad"
    assert describe_error(RuntimeError(text)) == "ValueError: The hidden size (-5) is bad"


# ----------------------------------------------------------------------------- end to end through Ray


def _tiny_dataset(root: Path, users: int = 30, items: int = 15, per_user: int = 8) -> Path:
    rng = random.Random(0)
    folder = root / "tiny"
    folder.mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(users):
        for t, i in enumerate(rng.sample(range(items), per_user)):
            lines.append(f"u{u}\ti{i}\t{1000 * u + t}")
    (folder / "tiny.inter").write_text("\n".join(lines) + "\n")
    return root


_TINY_SASREC = [
    "--epochs=1", "--n_layers=1", "--n_heads=2", "--inner_size=32", "--MAX_ITEM_LIST_LENGTH=5",
    "--train_batch_size=64", "--eval_batch_size=64", "--topk=[5,10]",
]


def _space(folder: Path, text: str) -> Path:
    path = folder / "space.hyper"
    path.write_text(text + "\n")
    return path


def test_errors_before_ray_starts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from recbole_letter.cli import main

    data = _tiny_dataset(tmp_path / "data")
    base = ["--dataset=tiny", f"--data_path={data}", "--tune", f"--checkpoint_dir={tmp_path / 'saved'}"]
    def error_of(argv: list[str]) -> str:  # bad input: exit 2 and one "error:" line, before Ray starts
        assert main(argv) == 2
        (line,) = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
        return line

    assert "tune one model at a time" in error_of(["--model=SASRec,GRU4Rec", *base, "--params_file=x.hyper"])
    assert "needs a search space" in error_of(["--model=SASRec", *base])
    # a search flag without --tune: an error, not a plain training run
    flag_error = error_of(["--model=SASRec", "--dataset=tiny", f"--data_path={data}", "--tune_algo=grid"])
    assert "--tune_algo only apply to a search. Fix: add --tune" in flag_error
    grid = _space(tmp_path, 'hidden_size choice [8,16]')
    assert "grid has 2 combinations" in error_of(["--model=SASRec", *base, f"--params_file={grid}", "--tune_samples=3"])
    typo = tmp_path / "typo.hyper"
    typo.write_text("learing_rate loguniform -8,0\n")
    assert "['learing_rate'] are not config keys of SASRec" in error_of(
        ["--model=SASRec", *base, f"--params_file={typo}", *_TINY_SASREC]
    )
    reserved = tmp_path / "reserved.hyper"
    reserved.write_text("data_path choice ['a','b']\n")
    assert "cannot be tuned" in error_of(["--model=SASRec", *base, f"--params_file={reserved}"])
    assert not (tmp_path / "saved" / "ray_results").exists()


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the module (start-up costs seconds); run_tuning reuses it."""
    import ray

    from recbole_letter.compat import ray_worker_setup

    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"worker_process_setup_hook": ray_worker_setup})
    yield ray
    ray.shutdown()


def _study(capsys: pytest.CaptureFixture, space: str, *flags: str, callbacks=()) -> tuple[int, str, dict, Path]:
    """Run a SASRec study on tiny data in the current folder (a tmp_path); returns the exit code,
    printed output, ``trials.json`` and the study folder. Ray ``callbacks`` go through
    ``run_tuning``, everything else through the command line."""
    from recbole_letter.cli import build_parser, main, parse_overrides
    from recbole_letter.tuning import run_tuning

    _tiny_dataset(Path("data"))
    Path("space.hyper").write_text(space)
    argv = ["--model=SASRec", "--dataset=tiny", "--data_path=data", "--tune", "--params_file=space.hyper",
            "--checkpoint_dir=saved", *_TINY_SASREC, *flags]
    if callbacks:
        args, extra = build_parser().parse_known_args(argv)
        code = run_tuning(args, [args.model], None, parse_overrides(extra), callbacks=callbacks)
    else:
        code = main(argv)
    out = capsys.readouterr().out
    study_dir = Path(next(line for line in out.splitlines() if line.startswith("study: "))[len("study: "):])
    return code, out, json.loads((study_dir / "trials.json").read_text()), study_dir


def test_grid_runs_both_values_exactly_once_and_one_crashes(
    local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from recbole_letter.quick_start import build_config

    monkeypatch.chdir(tmp_path)
    # hidden_size -5 makes the trial fail (its config check, before SASRec is built). Every dimension
    # is a choice: grid by default.
    code, out, payload, study_dir = _study(
        capsys, "hidden_size choice [16,-5]\n", "--tune_cpus_per_trial=1", "--learning_rate=0.003"
    )
    assert code == 0, out
    assert study_dir.parent == tmp_path / "saved" / "tune"
    assert payload["algorithm"] == "grid" and payload["complete"] and payload["planned_trials"] == 2
    rows = payload["trials"]
    assert sorted(r["params"]["hidden_size"] for r in rows) == [-5, 16]  # each value exactly once
    good = next(r for r in rows if r["params"]["hidden_size"] == 16)
    bad = next(r for r in rows if r["params"]["hidden_size"] == -5)
    assert rows[0] is not bad and rows[-1]["trial"] == bad["trial"]  # sorted: scored trials first
    assert bad["status"] == "error" and "hidden_size" in bad["error"] and "-5" in bad["error"] and "\n" not in bad["error"]
    assert good["status"] == "ok" and good["error"] is None
    assert 0.0 <= good["best_valid_score"] <= 1.0 and "ndcg@10" in good["test"] and "ndcg@10" in good["valid"]
    assert good["valid_curve"] == [[1, pytest.approx(good["best_valid_score"])]]  # 1 epoch, 1 validation
    # per-trial checkpoint dir (RecBole names checkpoints by the second), stage cache shared by symlink
    trial_dir = Path(good["checkpoint"]).parent
    assert Path(good["checkpoint"]).is_file() and trial_dir.parent == study_dir / "trials"
    assert (trial_dir / "stages").resolve() == (tmp_path / "saved" / "stages").resolve()
    assert Path(payload["ray_results"]).is_dir() and str(tmp_path / "saved" / "ray_results") in payload["ray_results"]
    plot = Path(payload["plot"])
    assert plot.parent == study_dir and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # printed summary: the table, the best config, the Ray directory
    assert "| rank | trial | status | hidden_size | valid NDCG@10 | test NDCG@10 | epochs | error |" in out
    assert payload["ray_version"] == local_ray.__version__
    assert f"Ray results: {payload['ray_results']}" in out and "2 trials, grid search" in out

    best_file = Path(payload["best_config"])
    best = yaml.safe_load(best_file.read_text())
    assert best["hidden_size"] == 16 and best["learning_rate"] == 0.003
    assert best["epochs"] == 1 and best["topk"] == [5, 10] and best["data_path"] == "data"  # typed overrides
    assert "checkpoint_dir" in best
    config, _ = build_config("SASRec", "tiny", [str(best_file)])  # loads back through the normal cascade
    assert config["hidden_size"] == 16 and config["epochs"] == 1 and config["topk"] == [5, 10]


def test_tpe_runs_a_three_trial_study_on_a_mixed_space(
    local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, payload, _ = _study(
        capsys, "hidden_size choice [8,16]\nlearning_rate loguniform -7,-4\n",
        "--tune_algo=tpe", "--tune_samples=3", "--tune_scheduler=fifo",
    )
    assert code == 0, out
    assert payload["algorithm"] == "tpe" and payload["complete"]
    # Ray saved HyperOptSearch's state (a pickled searcher; grid/random save basic-variant JSON)
    state = list(Path(payload["ray_results"]).glob("searcher-state-*.pkl"))
    assert state and b"HyperOptSearch" in state[0].read_bytes()
    rows = payload["trials"]
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert all(r["params"]["hidden_size"] in (8, 16) for r in rows)
    assert all(math.exp(-7) <= r["params"]["learning_rate"] <= math.exp(-4) for r in rows)
    assert len({r["params"]["learning_rate"] for r in rows}) == 3


# Set by the test below: the Ray callback interrupts the study (as Ctrl-C would) after this many
# trials have finished. Ray pickles callbacks into the experiment, so the restored study gets it
# back; it then finds the switch off.
_INTERRUPT_AFTER: dict[str, int | None] = {"trials": None}


class InterruptAfterTrials(Callback):
    """A Ray Tune callback that sends this process SIGINT (Ray's graceful stop, as Ctrl-C)."""

    finished = 0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.finished += 1
        if _INTERRUPT_AFTER["trials"] is not None and self.finished >= _INTERRUPT_AFTER["trials"]:
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_random_study_resumes_without_rerunning_finished_trials(
    local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from recbole_letter.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(_INTERRUPT_AFTER, "trials", 1)
    code, out, first, study_dir = _study(
        capsys, "hidden_size choice [8,16,24]\n",
        "--tune_algo=random", "--tune_samples=3", "--tune_max_concurrent=1", "--tune_scheduler=fifo",
        callbacks=[InterruptAfterTrials()],
    )
    assert code == 130 and f"--tune_resume={study_dir}" in out, out
    assert not first["complete"] and first["planned_trials"] == 3
    done = [r for r in first["trials"] if r["status"] == "ok"]
    assert len(done) == 1 and Path(study_dir / "best_config.yaml").is_file()

    monkeypatch.setitem(_INTERRUPT_AFTER, "trials", None)
    code = main([f"--tune_resume={study_dir}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "resuming (session 2)" in out
    final = json.loads((study_dir / "trials.json").read_text())
    rows = final["trials"]
    assert final["complete"] and final["sessions"] == 2 and len(rows) == 3
    assert sorted(r["params"]["hidden_size"] for r in rows) == [8, 16, 24]  # random, yet no repeat
    assert all(r["status"] == "ok" for r in rows)
    kept = next(r for r in rows if r["trial"] == done[0]["trial"])
    assert kept["entered_at"] == done[0]["entered_at"] and kept["checkpoint"] == done[0]["checkpoint"]
    # the finished trial ran once: one model checkpoint in its folder; each trial has its own
    assert len(list(Path(kept["checkpoint"]).parent.glob("SASRec-*.pth"))) == 1
    assert len(list((study_dir / "trials").glob("*/SASRec-*.pth"))) == 3
    best_text = (study_dir / "best_config.yaml").read_text()
    assert "Best of 3 trials" in best_text
    assert yaml.safe_load(best_text)["hidden_size"] == rows[0]["params"]["hidden_size"]  # rows: best first


def test_data_parallel_trial_trains_on_two_ray_train_workers(
    local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """--tune_workers_per_trial=2: the trial is a Ray Train TorchTrainer; its 2 workers form a gloo
    group (RecBole's multi-process keys: shards, averaged gradients, rank-0 checkpoint, sharded
    evaluation) and the study records rank 0's result."""
    monkeypatch.chdir(tmp_path)
    code, out, payload, study_dir = _study(
        capsys, "hidden_size choice [16]\n", "--tune_cpus_per_trial=2", "--tune_workers_per_trial=2",
        "--tune_scheduler=fifo", "--ddp_timeout=120",
    )
    assert code == 0, out
    [row] = payload["trials"]
    assert row["status"] == "ok", row["error"]
    assert row["ranks"] == 2  # reported by the run itself: the process group had 2 ranks
    assert row["params"] == {"hidden_size": 16}
    assert 0.0 <= row["best_valid_score"] <= 1.0 and "ndcg@10" in row["test"]
    trial_dir = Path(row["checkpoint"]).parent
    assert [p.name for p in trial_dir.glob("*.pth")] == [Path(row["checkpoint"]).name]  # rank 0 wrote the only one


def test_workers_per_trial_needs_a_gpu_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from recbole_letter.cli import main

    monkeypatch.chdir(tmp_path)
    _tiny_dataset(Path("data"))
    Path("space.hyper").write_text("hidden_size choice [16]\n")
    code = main(["--model=SASRec", "--dataset=tiny", "--data_path=data", "--tune", "--params_file=space.hyper",
                 "--tune_gpus_per_trial=1", "--tune_workers_per_trial=2", *_TINY_SASREC])
    err = capsys.readouterr().err
    assert code == 2 and "--tune_workers_per_trial=2" in err and "--tune_gpus_per_trial=2" in err
