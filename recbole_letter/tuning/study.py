"""A study: the validated tuning request, prepared on the driver before Ray starts, and saved so
``--tune_resume`` can continue it.

Where files go (``<ckpt>`` = the absolute ``checkpoint_dir``, default ``saved``):

* ``<ckpt>/stages``: the stage cache (text/CF embeddings, fitted tokenizers), shared by all trials.
* ``<ckpt>/tune/<experiment>/``: the study directory (what ``--tune_resume`` takes). It holds
  ``study.json`` (this request, written before the first trial), ``trials/<trial>/`` (each trial's
  own ``checkpoint_dir``), and at the end ``trials.json``, ``trials.png`` and ``best_config.yaml``.
* ``--tune_storage`` (default ``<ckpt>/ray_results``) ``/<experiment>``: Ray's own results and the
  experiment state that ``Tuner.restore`` reads.

Ray runs each trial in its own working directory, so every relative path (``data_path``,
``checkpoint_dir``, ``--config_files``, any existing relative file named in the config) is made
absolute here. On a multi-node cluster ``<ckpt>`` must be on a shared file system for nodes to
share the stage cache; otherwise each node computes its own copy once.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from recbole_letter.atomic import write_json_atomic
from recbole_letter.hyper import HyperParam, parse_hyper_file, parse_hyper_text
from recbole_letter.tuning import search
from recbole_letter.tuning.ray_api import TuningError, hyperopt_search_class
from recbole_letter.tuning.trial import TrialJob, plain

LOGGER = logging.getLogger("recbole_letter")

STUDY_FILE = "study.json"
# Keys holding paths: always made absolute before dispatch. Other string values are made absolute
# when they name an existing relative path that looks like one (contains a separator or suffix).
_PATH_KEYS = ("data_path", "checkpoint_dir")
# Keys a trial must not tune: they identify the run or are set per trial by this package.
_RESERVED = {"model", "dataset", "data_path", "checkpoint_dir", "gpu_id", "use_gpu", "config_files"}
# Flags that define a study; a resumed study keeps its own (only --ray_address may change).
_STUDY_FLAGS = (
    "params_file", "tune_algo", "tune_samples", "tune_scheduler", "tune_cpus_per_trial", "tune_gpus_per_trial",
    "tune_workers_per_trial",
    "tune_storage", "tune_max_concurrent", "tune_initial_points", "config_files",
)
# Defaults of the tuning flags that argparse leaves as None (None = "not given", see resume).
FLAG_DEFAULTS = {"tune_scheduler": "asha", "tune_cpus_per_trial": 1.0, "tune_gpus_per_trial": 0.0}


@dataclass
class Study:
    """A prepared search: validated on the driver before Ray starts."""

    model: str
    dataset: str
    space: list[HyperParam]
    space_text: str
    params_file: str
    job: TrialJob
    valid_metric: str
    bigger: bool
    seed: int
    best_config_overrides: dict[str, Any]
    experiment: str
    experiment_dir: Path
    storage: str
    algorithm: str
    n_trials: int
    scheduler: str
    max_concurrent: int | None
    initial_points: int | None
    planned: list[dict[str, Any]] = field(default_factory=list)
    sessions: int = 1

    @property
    def ray_dir(self) -> str:
        """Ray's experiment directory (what ``Tuner.restore`` takes)."""
        return f"{self.storage.rstrip('/')}/{self.experiment}" if "://" in self.storage else str(Path(self.storage) / self.experiment)


def _looks_like_path(value: str) -> bool:
    return (os.sep in value or "/" in value or Path(value).suffix != "") and os.path.exists(value)


def absolute_paths(raw_config: Mapping[str, Any]) -> dict[str, str]:
    """Overrides that make every relative path in ``raw_config`` absolute (Ray changes cwd per trial).

    ``raw_config`` is what files and command line gave (RecBole's ``external_config_dict``).
    ``data_path`` defaults to RecBole's ``dataset/`` and ``checkpoint_dir`` to ``saved``.
    """
    fixed: dict[str, str] = {}
    for key in _PATH_KEYS:
        value = raw_config.get(key) or {"data_path": "dataset/", "checkpoint_dir": "saved"}[key]
        fixed[key] = os.path.abspath(str(value))
    for key, value in raw_config.items():
        if key in fixed or not isinstance(value, str) or os.path.isabs(value):
            continue
        if _looks_like_path(value):
            fixed[key] = os.path.abspath(value)
    return fixed


def documented_keys() -> set[str]:
    """Keys of this package's model YAMLs.

    A model's config does not list every key its stages read: TIGER reads the LETTER tokenizer's
    ``alpha``/``beta`` when they are set. Typos still fail the check in :func:`prepare_study`.
    """
    import yaml

    from recbole_letter.config import PROPERTIES_DIR

    keys: set[str] = set()
    for file in sorted((PROPERTIES_DIR / "model").glob("*.yaml")):
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        if isinstance(data, dict):
            keys.update(str(k) for k in data)
    return keys


def _unique_experiment(base: str, roots: Sequence[Path]) -> str:
    name, n = base, 1
    while any((root / name).exists() for root in roots):
        n += 1
        name = f"{base}-{n}"
    return name


def _flag(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name, None)
    return FLAG_DEFAULTS.get(name) if value is None else value


def _workers_per_trial(args: argparse.Namespace, gpus: float) -> int:
    """Ray Train workers per trial: the flag, else one per GPU when a trial asks for several GPUs."""
    workers = getattr(args, "tune_workers_per_trial", None)
    if workers is None:
        return int(gpus) if gpus > 1 and float(gpus).is_integer() else 1
    if workers < 1:
        raise TuningError(f"--tune_workers_per_trial={workers} must be >= 1. Fix: e.g. 2, or leave it out.")
    if gpus > 0 and gpus < workers:
        raise TuningError(
            f"--tune_workers_per_trial={workers} with --tune_gpus_per_trial={gpus:g}: each worker needs a GPU. "
            f"Fix: --tune_gpus_per_trial={workers} (or fewer workers)."
        )
    return workers


def _check_resources(args: argparse.Namespace) -> tuple[float, float, int | None]:
    cpus, gpus = float(_flag(args, "tune_cpus_per_trial")), float(_flag(args, "tune_gpus_per_trial"))
    if cpus <= 0 or gpus < 0:
        raise TuningError("--tune_cpus_per_trial must be > 0 and --tune_gpus_per_trial >= 0. Fix: e.g. 1 and 0.")
    _workers_per_trial(args, gpus)
    max_concurrent = getattr(args, "tune_max_concurrent", None)
    if max_concurrent is not None and max_concurrent < 1:
        raise TuningError("--tune_max_concurrent must be >= 1. Fix: omit it or give a positive number.")
    initial = getattr(args, "tune_initial_points", None)
    if initial is not None and initial < 1:
        raise TuningError("--tune_initial_points must be >= 1. Fix: omit it or give a positive number.")
    return cpus, gpus, max_concurrent


def prepare_study(
    args: argparse.Namespace, models: Sequence[str], config_files: Sequence[str] | None, overrides: Mapping[str, str]
) -> Study:
    """Validate the request, plan the trials and build the trial job; errors come before Ray starts."""
    from recbole_letter.quick_start import build_config

    if len(models) != 1:
        raise TuningError(
            f"--tune got {len(models)} models ({', '.join(models)}): tune one model at a time. Fix: pass a single --model."
        )
    if not args.params_file:
        raise TuningError("--tune needs a search space. Fix: add --params_file=properties/hyper/<Model>.hyper.")
    cpus, gpus, max_concurrent = _check_resources(args)
    space = parse_hyper_file(args.params_file)
    space_text = Path(args.params_file).read_text(encoding="utf-8")
    reserved = sorted({p.name for p in space} & _RESERVED)
    if reserved:
        raise TuningError(f"{args.params_file}: {reserved} cannot be tuned (set per run/trial). Fix: remove those lines.")
    algorithm, n_trials = search.plan_trials(space, getattr(args, "tune_algo", None), getattr(args, "tune_samples", None))

    files = [os.path.abspath(f) for f in config_files or []]
    # Build the config once on the driver: a missing dataset, bad file or unknown key fails now,
    # not N times inside Ray workers.
    config, spec = build_config(models[0], args.dataset, files, dict(overrides))
    from recbole_letter.validate import validate_config

    validate_config(config, spec, overrides, files)  # every value and file, as a plain run checks them
    known = set(config.final_config_dict) | documented_keys()
    unknown = [p.name for p in space if p.name not in known]
    if unknown:
        raise TuningError(
            f"{args.params_file}: {unknown} are not config keys of {spec.name} (typo?). "
            f"Fix: use keys from properties/model/{spec.name}.yaml or RecBole's config docs."
        )
    seed = int(config["seed"])
    if algorithm == "tpe":
        hyperopt_search_class()  # a missing hyperopt fails here, before Ray starts
        planned: list[dict[str, Any]] = []
    else:
        planned = search.grid_configs(space) if algorithm == "grid" else search.random_configs(space, n_trials, seed)
    fixed = absolute_paths(config.external_config_dict)
    for key, value in overrides.items():
        if key in {p.name for p in space}:
            LOGGER.warning("--%s=%s is also in %s: each trial uses its own value", key, value, args.params_file)
    # RecBole's own str -> value conversion of command-line values (eval, true/false), so the
    # best-config YAML holds typed values that Config reads back identically.
    typed_overrides = {k: plain(v) for k, v in config._convert_config_dict(dict(overrides)).items()}

    checkpoint_dir = Path(fixed["checkpoint_dir"])
    storage = args.tune_storage or str(checkpoint_dir / "ray_results")
    if "://" not in storage:
        storage = os.path.abspath(storage)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    roots = [checkpoint_dir / "tune"] + ([Path(storage)] if "://" not in storage else [])
    experiment = _unique_experiment(f"{spec.name}-{args.dataset}-{stamp}", roots)
    experiment_dir = checkpoint_dir / "tune" / experiment
    job = TrialJob(
        model=spec.name,
        dataset=args.dataset,
        config_files=tuple(files),
        overrides={**overrides, **fixed},
        checkpoint_dir=str(checkpoint_dir),
        trials_dir=str(experiment_dir / "trials"),
        saved=bool(getattr(args, "saved", True)),
        cpus_per_trial=cpus,
        gpus_per_trial=gpus,
        workers_per_trial=_workers_per_trial(args, gpus),
        valid_metric_bigger=bool(config["valid_metric_bigger"]),
    )
    return Study(
        model=spec.name,
        dataset=args.dataset,
        space=space,
        space_text=space_text,
        params_file=str(args.params_file),
        job=job,
        valid_metric=str(config["valid_metric"]),
        bigger=bool(config["valid_metric_bigger"]),
        seed=seed,
        best_config_overrides=typed_overrides,
        experiment=experiment,
        experiment_dir=experiment_dir,
        storage=storage,
        algorithm=algorithm,
        n_trials=n_trials,
        scheduler=str(_flag(args, "tune_scheduler")),
        max_concurrent=max_concurrent,
        initial_points=getattr(args, "tune_initial_points", None),
        planned=planned,
    )


# ------------------------------------------------------------------ persistence for --tune_resume


def save_study(study: Study) -> Path:
    """Write ``study.json`` into the study directory (before Ray starts, so an interrupt keeps it)."""
    payload = {
        field_.name: getattr(study, field_.name)
        for field_ in dataclasses.fields(study)
        if field_.name not in {"space", "job", "experiment_dir"}
    }
    payload["job"] = {**dataclasses.asdict(study.job), "overrides": dict(study.job.overrides)}
    payload["ray_dir"] = study.ray_dir
    return write_json_atomic(plain(payload), study.experiment_dir / STUDY_FILE, trailing_newline=True)


def load_study(directory: str | os.PathLike[str]) -> Study:
    """The study saved in ``directory`` (a ``<checkpoint_dir>/tune/<experiment>`` folder)."""
    folder = Path(directory).expanduser().resolve()
    file = folder / STUDY_FILE
    if not file.is_file():
        hint = (
            "that is Ray's results folder; pass the study folder <checkpoint_dir>/tune/<experiment> instead"
            if (folder / "tuner.pkl").is_file()
            else "pass the folder printed as 'study:' when the study started, <checkpoint_dir>/tune/<experiment>"
        )
        raise TuningError(f"--tune_resume={directory}: no {STUDY_FILE} there. Fix: {hint}.")
    data = json.loads(file.read_text(encoding="utf-8"))
    job = data.pop("job")
    data.pop("ray_dir", None)
    space = parse_hyper_text(data["space_text"], data["params_file"])
    job["config_files"] = tuple(job["config_files"])
    return Study(space=space, job=TrialJob(**job), experiment_dir=folder, **data)


def resume_study(args: argparse.Namespace, models: Sequence[str] | None, overrides: Mapping[str, str]) -> Study:
    """The saved study of ``--tune_resume``; flags that would change it are errors, not ignored."""
    study = load_study(args.tune_resume)
    given = [f"--{name}" for name in _STUDY_FLAGS if getattr(args, name, None) is not None]
    given += [f"--{key}" for key in overrides]
    if models and list(models) != [study.model]:
        given.append("--model")
    if getattr(args, "dataset", None) not in (None, study.dataset):
        given.append("--dataset")
    if given:
        raise TuningError(
            f"--tune_resume continues the study as it was started ({study.model} on {study.dataset}, "
            f"{study.params_file}, {study.algorithm}); it cannot change {', '.join(given)}. "
            f"Fix: drop those flags, or start a new study with --tune."
        )
    study.sessions += 1
    return study
