"""Check a whole command before any stage or training runs.

A wrong value found after the text, CF and tokenizer stages ran -- or after the first model of
``--model=SASRec,TIGER`` trained for an hour -- costs the user that hour; a raw numpy or pandas
error (``'<=' not supported between 'float' and 'str'``, ``index -1 is out of bounds``) costs
them the search for what it means. So the runner calls :func:`validate_command` first: every
model of the list, every config value, every file the run will read. Each problem is an
:class:`InputError` whose text is one line naming the key / file / line and the fix.

What is checked, and why each is cheap enough to do up front:

* **Config values the user set** (command line, ``--config_files``) against the type in the
  typed comment of the YAML that declares the key (RecBole's and ours: ``epochs: 300  # (int)``),
  so ``--learning_rate=abc`` is an error instead of a string that breaks an optimizer later.
* **Ranges and choices** of every value that matters (positive sizes and epochs, learning rates,
  probabilities, ``tau``, scheduler / learner / logging-level names), and relations between
  keys (``beam_size >= max(topk)``, ``inverse_sqrt`` needs warm-up, a complete ``eval_args``,
  ``eval_mask_history`` only with full-sort evaluation).
* **Files**: the ``.inter`` file (and ``.item`` / ``.user`` when they will be read) line by line
  -- typed header, field count per row, encoding, required fields present and numeric -- and
  whether enough users have enough interactions for the leave-one-out split; embedding ``.npy``
  and index JSON files the model will use; the text encoder; a usable ``checkpoint_dir``.
  The atomic-file scan is memoised per file version, so several models (or a repeated API call)
  scan once.
"""
from __future__ import annotations

import ast
import functools
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

LOGGER = logging.getLogger("recbole_letter")

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
LEARNERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam")  # RecBole's _build_optimizer
LOG_STATES = ("debug", "info", "warning", "error", "critical")  # RecBole's init_logger falls back to INFO
_OUR_PROPERTIES = Path(__file__).resolve().parent / "properties"


class InputError(ValueError):
    """Bad user input found before any work; ``str()`` is one line naming the problem and the fix."""


# ----------------------------------------------------------------------------- command line


def parse_override(key: str, raw: str) -> Any:
    """A ``--key=value`` value: lists and mappings are parsed here, everything else is left to RecBole.

    RecBole ``eval``s command-line values, so ``--item_text_fields=[title]`` (its own YAML list
    syntax) stays the *string* ``"[title]"`` and is then read as a column named ``[title]``.
    Values starting with ``[`` or ``{`` are read as a Python literal, else as YAML flow syntax.
    """
    text = raw.strip()
    if not text or text[0] not in "[{":
        return raw
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or type(err).__name__
        raise InputError(
            f"--{key}={raw} is neither a Python literal nor YAML ({problem}). "
            f"Fix: write a list as --{key}=[a,b] or a mapping as --{key}=\"{{'k': 1}}\""
        ) from None


# ----------------------------------------------------------------------------- YAML files


def load_yaml_file(path: str | os.PathLike[str], what: str = "config file") -> dict[str, Any]:
    """A YAML mapping from ``path``; every way it can fail is an :class:`InputError` with the line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} {p} not found. Fix: pass an existing YAML file (paths are relative to {Path.cwd()}).")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {p} is not UTF-8 text (byte {err.start}). Fix: save it as UTF-8.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(
            f"{what} {p}{where}: YAML syntax error ({problem}). Fix: correct that line "
            "(one 'key: value' per line; lists as [a, b])."
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(
            f"{what} {p} holds a {type(data).__name__}, not a mapping of config keys. "
            "Fix: write one 'key: value' per line."
        )
    return data


# ----------------------------------------------------------------------------- declared types

_TYPED_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):[ \t]*(.*?)[ \t]*#[ \t]*\(([^)]*)\)")


@dataclass(frozen=True)
class Declared:
    """A key's type as written in a YAML comment, its default text and where it is declared."""

    type: str
    default: str
    file: str


@functools.lru_cache(maxsize=64)
def _declared_in(path: str) -> dict[str, Declared]:
    out: dict[str, Declared] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        match = _TYPED_LINE.match(line)
        if match:
            out[match.group(1)] = Declared(match.group(3).strip().lower(), match.group(2).strip(), path)
    return out


def _recbole_properties() -> Path:
    import recbole

    return Path(recbole.__file__).resolve().parent / "properties"


def declared_keys(model_name: str, model_files: Sequence[str | os.PathLike[str]] = ()) -> dict[str, Declared]:
    """Every key with a typed comment that a run of ``model_name`` can read (later files win)."""
    recbole_props = _recbole_properties()
    files = [recbole_props / "overall.yaml", recbole_props / "dataset" / "sample.yaml"]
    files += sorted((recbole_props / "quick_start_config").glob("*.yaml"))
    files.append(recbole_props / "model" / f"{model_name}.yaml")
    files.append(_OUR_PROPERTIES / "overall.yaml")
    files += [Path(f) for f in model_files]
    out: dict[str, Declared] = {}
    for f in files:
        out.update(_declared_in(str(f)))
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _is_text(v: Any) -> bool:
    # RecBole evals command-line values, so --gpu_id=0 arrives as the int 0: numbers are fine text
    return isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool))


_BASE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    "float": _is_number,
    "str": _is_text,
    "string": _is_text,
    "bool": lambda v: isinstance(v, bool) or (_is_int(v) and v in (0, 1)),
    "dict": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, (list, tuple)),
}


def type_matches(value: Any, spec: str) -> bool | None:
    """Whether ``value`` fits a declared type such as ``int``, ``list of int``, ``list or int or None``.

    ``None`` means the spec is not understood (not checked).
    """
    for alt in re.split(r"\s+or\s+|\s*,\s*", spec.strip().lower()):
        alt = alt.strip()
        if alt in ("none", "optional"):
            if value is None:
                return True
            continue
        base, _, element = alt.partition(" of ")
        check = _BASE_CHECKS.get(base.strip())
        if check is None:
            return None
        if not check(value):
            continue
        if base.strip() == "list" and element:
            element_check = _BASE_CHECKS.get(element.strip())
            if element_check is not None and not all(element_check(v) for v in value):
                continue
        return True
    return False


# ----------------------------------------------------------------------------- ranges

@dataclass(frozen=True)
class Rule:
    check: Callable[[Any], bool]
    expect: str
    example: str
    optional: bool = False  # None allowed


def _positive_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def _nonneg_int(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _positive(v: Any) -> bool:
    return _is_number(v) and v > 0


def _nonneg(v: Any) -> bool:
    return _is_number(v) and v >= 0


def _probability(v: Any) -> bool:
    return _is_number(v) and 0 <= v < 1


def _choice(options: Sequence[str]) -> Callable[[Any], bool]:
    lowered = {o.lower() for o in options}
    return lambda v: isinstance(v, str) and v.lower() in lowered


def _codebook_size(v: Any) -> bool:
    return _positive_int(v) or (isinstance(v, (list, tuple)) and bool(v) and all(_positive_int(x) for x in v))


def _scheduler_names() -> tuple[str, ...]:
    from recbole_letter.generation.trainer import SCHEDULERS

    return SCHEDULERS


POSITIVE_INT_KEYS = (
    "epochs", "train_batch_size", "eval_batch_size", "MAX_ITEM_LIST_LENGTH", "stopping_step", "eval_step",
    "n_layers", "n_heads", "hidden_size", "inner_size", "embedding_size", "beam_size", "decode_batch_size",
    "d_model", "d_kv", "d_ff", "num_heads", "num_encoder_layers", "num_decoder_layers", "num_levels",
    "code_dim", "tokenizer_epochs", "tokenizer_batch_size", "kmeans_iters", "sinkhorn_iters", "n_div_clusters",
    "div_refresh_every", "cf_epochs", "text_encoder_batch_size", "text_max_length",
    "gradient_accumulation_steps",
)
OPTIONAL_POSITIVE_INT_KEYS = ("train_batches_per_epoch", "item_text_max_chars", "torch_num_threads")
NONNEG_INT_KEYS = ("warmup_steps", "user_token_buckets", "restart_dead_codes_every", "worker")
POSITIVE_FLOAT_KEYS = (
    "learning_rate", "tokenizer_learning_rate", "tau", "cf_temperature", "div_temperature", "sinkhorn_epsilon",
)
NONNEG_FLOAT_KEYS = ("weight_decay", "tokenizer_weight_decay", "alpha", "beta", "commitment_beta", "reg_weight")
PROBABILITY_KEYS = ("dropout_rate", "tokenizer_dropout", "hidden_dropout_prob", "attn_dropout_prob", "dropout_prob")


def value_rules() -> dict[str, Rule]:
    """Range / choice rule per config key (applies to every value, default or not)."""
    rules: dict[str, Rule] = {}
    for key in POSITIVE_INT_KEYS:
        rules[key] = Rule(_positive_int, "a positive integer", "e.g. 10")
    for key in OPTIONAL_POSITIVE_INT_KEYS:
        rules[key] = Rule(_positive_int, "a positive integer or ~ (none)", "e.g. 8", optional=True)
    for key in NONNEG_INT_KEYS:
        rules[key] = Rule(_nonneg_int, "an integer >= 0", "e.g. 0")
    for key in POSITIVE_FLOAT_KEYS:
        rules[key] = Rule(_positive, "a finite number > 0", "e.g. 0.001")
    for key in NONNEG_FLOAT_KEYS:
        rules[key] = Rule(_nonneg, "a finite number >= 0", "e.g. 0.0")
    for key in PROBABILITY_KEYS:
        rules[key] = Rule(_probability, "a probability in [0, 1)", "e.g. 0.1")
    rules["seed"] = Rule(_is_int, "an integer", "e.g. 2020")
    rules["codebook_size"] = Rule(_codebook_size, "a positive integer or a list of them (one per level)", "e.g. 256")
    rules["learner"] = Rule(_choice(LEARNERS), f"one of {', '.join(LEARNERS)}", "e.g. adam")
    rules["state"] = Rule(_choice(LOG_STATES), f"one of {', '.join(s.upper() for s in LOG_STATES)}", "e.g. INFO", True)
    rules["lr_scheduler"] = Rule(_choice(_scheduler_names()), f"one of {', '.join(_scheduler_names())}", "e.g. cosine", True)
    rules["cf_similarity"] = Rule(_choice(("cosine", "dot")), "cosine or dot", "e.g. cosine")
    rules["loss_type"] = Rule(_choice(("CE", "BPR")), "CE or BPR", "e.g. CE", optional=True)
    return rules


# ----------------------------------------------------------------------------- where a value came from


def _source(key: str, overrides: Mapping[str, Any], user_files: Sequence[str], context: str | None = None) -> str:
    """How to tell the user where ``key`` was set: the flag, the user's YAML file, or the defaults."""
    if context is not None:
        return f"{context}: {key}"
    if key in overrides:
        return f"--{key}={overrides[key]}"
    for f in reversed(list(user_files)):
        try:
            if key in load_yaml_file(f):
                return f"{key} in {f}"
        except InputError:
            continue
    return f"{key} (default from properties/*.yaml)"


def _user_value(key: str, overrides: Mapping[str, Any], user_files: Sequence[str]) -> Any:
    """The value the user wrote for ``key`` (command line wins over later files), before RecBole fills defaults."""
    if key in overrides:
        value = overrides[key]
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass
        return value
    for f in reversed(list(user_files)):
        data = load_yaml_file(f)
        if key in data:
            return data[key]
    return None


def _fix_hint(
    key: str, example: str, overrides: Mapping[str, Any], user_files: Sequence[str], context: str | None = None
) -> str:
    value = example[5:] if example.startswith("e.g. ") else example
    if context is not None:
        return f"Fix: e.g. {context}={{{key}: {value}}}."
    if key in overrides or not user_files:
        return f"Fix: e.g. --{key}={value}."
    return f"Fix: e.g. '{key}: {value}'."


# ----------------------------------------------------------------------------- config values


def check_values(
    config: Any,
    model_name: str,
    model_files: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
    user_files: Sequence[str] = (),
    context: str | None = None,
) -> None:
    """Types of user-set keys, ranges of every known key, and relations between keys.

    ``context`` names a nested set of keys in messages (``cf_config``: the CF model's overrides).
    """
    overrides = dict(overrides or {})
    declared = declared_keys(model_name, model_files)
    user_keys = set(overrides)
    for f in user_files:
        user_keys |= set(load_yaml_file(f))
    final = config.final_config_dict if hasattr(config, "final_config_dict") else dict(config)
    for key in sorted(user_keys):
        if key not in declared and context is None:
            _warn_if_typo(key, declared)
        if key not in final or key not in declared:
            continue
        value = final[key]
        decl = declared[key]
        if value is None and decl.default in ("", "~", "None", "null"):
            continue
        if type_matches(value, decl.type) is False:
            raise InputError(
                f"{_source(key, overrides, user_files, context)}: {value!r} is not a valid {decl.type}. "
                f"{_fix_hint(key, 'e.g. ' + (decl.default or '...'), overrides, user_files, context)}"
            )
    for key, rule in value_rules().items():
        if key not in final:
            continue
        value = final[key]
        if value is None and (rule.optional or key not in user_keys):
            continue
        if not rule.check(value):
            raise InputError(
                f"{_source(key, overrides, user_files, context)}: {value!r} must be {rule.expect}. "
                f"{_fix_hint(key, rule.example, overrides, user_files, context)}"
            )
    _check_relations(final, overrides, user_files, user_keys)


def _warn_if_typo(key: str, declared: Mapping[str, Declared]) -> None:
    """RecBole keeps unknown keys silently; a near-miss of a declared key is almost always a typo."""
    import difflib

    close = difflib.get_close_matches(key, list(declared), n=1, cutoff=0.85)
    if close:
        LOGGER.warning("config key %r is not read by this model; did you mean %r? (it is kept but unused)", key, close[0])


def _max_topk(final: Mapping[str, Any]) -> int:
    topk = final.get("topk")
    if isinstance(topk, (list, tuple)) and topk:
        return max(int(k) for k in topk)
    return int(topk) if _is_int(topk) else 0


def _check_relations(
    final: Mapping[str, Any], overrides: Mapping[str, Any], user_files: Sequence[str], user_keys: set[str]
) -> None:
    beam = final.get("beam_size")
    if beam is not None and beam < _max_topk(final):
        raise InputError(
            f"beam_size={beam} < max(topk)={_max_topk(final)}: the beam must hold at least max(topk) items or "
            f"top-K fills with -inf ties. Fix: --beam_size={_max_topk(final)} (or more), or lower topk."
        )
    scheduler = str(final.get("lr_scheduler") or "none").lower()
    if scheduler == "inverse_sqrt" and not final.get("warmup_steps"):
        raise InputError(
            "lr_scheduler=inverse_sqrt decays as sqrt(warmup_steps/step) and needs warmup_steps > 0. "
            "Fix: e.g. --warmup_steps=100, or --lr_scheduler=cosine."
        )
    codebook, levels = final.get("codebook_size"), final.get("num_levels")
    if isinstance(codebook, (list, tuple)) and _is_int(levels) and len(codebook) != levels:
        raise InputError(
            f"codebook_size={list(codebook)} has {len(codebook)} entries but num_levels={levels}. "
            "Fix: give one size per level, or a single integer."
        )
    proj = final.get("feed_forward_proj")
    if proj is not None:
        _check_feed_forward_proj(proj)
    if "eval_args" in user_keys:
        _check_eval_args(_user_value("eval_args", overrides, user_files), overrides, user_files)
    if final.get("eval_mask_history"):
        mode = (final.get("eval_args") or {}).get("mode")
        sampled = [m for m in (mode.values() if isinstance(mode, dict) else [mode]) if str(m).lower() != "full"]
        if sampled:
            raise InputError(
                f"eval_mask_history=True masks a full-sort ranking, but eval_args mode {mode} samples negatives "
                f"({sampled[0]}). Fix: eval_args mode: full, or --eval_mask_history=False."
            )


def _check_feed_forward_proj(proj: Any) -> None:
    """T5's ``feed_forward_proj`` is ``<act>`` or ``gated-<act>`` with a transformers activation."""
    from transformers.activations import ACT2FN

    parts = str(proj).split("-")
    ok = isinstance(proj, str) and (len(parts) == 1 or (len(parts) == 2 and parts[0] == "gated"))
    if not ok or parts[-1] not in ACT2FN:
        raise InputError(
            f"feed_forward_proj={proj!r} is not '<activation>' or 'gated-<activation>' with a transformers "
            f"activation ({', '.join(sorted(k for k in ACT2FN if '_' not in k)[:8])}, ...). Fix: e.g. relu or gated-gelu."
        )


def _check_eval_args(eval_args: Any, overrides: Mapping[str, Any], user_files: Sequence[str]) -> None:
    required = ("split", "order", "group_by", "mode")
    missing = [k for k in required if not isinstance(eval_args, dict) or k not in eval_args]
    if missing:
        raise InputError(
            f"{_source('eval_args', overrides, user_files)} lacks {missing}: a partial eval_args replaces RecBole's "
            "whole preset instead of merging. Fix: give all four keys, e.g. "
            "{split: {LS: valid_and_test}, order: TO, group_by: user, mode: full}."
        )


def check_checkpoint_dir(config: Any) -> None:
    """``checkpoint_dir`` (and its ``results``/``stages`` folders) must be, or can become, directories."""
    raw = config["checkpoint_dir"] or "saved"
    root = Path(raw)
    for path in (root, root / "results", root / "stages"):
        if path.exists() and not path.is_dir():
            raise InputError(
                f"checkpoint_dir={raw}: {path} is a file, not a directory; checkpoints, stage caches and "
                "results are written there. Fix: point --checkpoint_dir at a directory (or move the file)."
            )
    existing = root
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(
            f"checkpoint_dir={raw} cannot be created: {existing} is a file. Fix: choose another --checkpoint_dir."
        )
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"checkpoint_dir={raw} is not writable ({existing} denies write access). Fix: choose a writable --checkpoint_dir."
        )


# ----------------------------------------------------------------------------- atomic files


@dataclass(frozen=True)
class AtomicScan:
    """What the line-by-line scan of one atomic file learned."""

    fields: tuple[tuple[str, str], ...]  # (name, type) from the header
    rows: int
    per_key: tuple[tuple[str, int], ...] = ()  # counts per value of ``count_field`` (users)
    values: tuple[str, ...] = ()  # distinct values of ``collect_field`` (items)


def _fix_encoding(encoding: str) -> str:
    return f"Fix: re-save the file as {encoding} (e.g. iconv -f latin1 -t utf-8) or set --encoding=<its codec>."


@functools.lru_cache(maxsize=32)
def _scan_cached(
    path: str, _stat: tuple[int, int, int], sep: str, encoding: str, required: tuple[str, ...],
    numeric: tuple[str, ...], count_field: str | None, collect_field: str | None,
) -> AtomicScan:
    return _scan(Path(path), sep, encoding, required, numeric, count_field, collect_field)


def scan_atomic_file(
    path: str | os.PathLike[str],
    sep: str = "\t",
    encoding: str = "utf-8",
    required: Sequence[str] = (),
    numeric: Sequence[str] = (),
    count_field: str | None = None,
    collect_field: str | None = None,
) -> AtomicScan:
    """Validate an atomic file (header, field count per row, encoding, required / numeric fields).

    ``required`` fields must be non-empty in every row, ``numeric`` ones must parse as numbers
    (RecBole would fill the column mean silently). Memoised per file version.
    """
    p = Path(path)
    st = p.stat()
    return _scan_cached(
        str(p.resolve()), (st.st_ino, st.st_size, st.st_mtime_ns), sep, encoding, tuple(required), tuple(numeric),
        count_field, collect_field,
    )


def _scan(
    path: Path, sep: str, encoding: str, required: tuple[str, ...], numeric: tuple[str, ...],
    count_field: str | None, collect_field: str | None,
) -> AtomicScan:
    header: list[tuple[str, str]] | None = None
    counts: Counter[str] = Counter()
    values: set[str] = set()
    rows = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as err:
                raise InputError(
                    f"{path}, line {lineno}: not valid {encoding} (byte 0x{raw[err.start]:02x} at column {err.start + 1}). "
                    f"{_fix_encoding(encoding)}"
                ) from None
            except LookupError:
                raise InputError(f"encoding={encoding!r} is not a known codec. Fix: e.g. --encoding=utf-8.") from None
            line = line.rstrip("\r\n")
            if header is None:
                header = _parse_header(path, line, sep)
                names = [n for n, _ in header]
                index = {n: i for i, n in enumerate(names)}
                missing = [f for f in (*required, *numeric) if f not in index]
                if missing:
                    raise InputError(
                        f"{path}: header lacks required column(s) {missing} (has {names}). Fix: add them as "
                        "'name:type' (e.g. 'timestamp:float'), or point USER_ID_FIELD / ITEM_ID_FIELD / TIME_FIELD "
                        "at the columns you have."
                    )
                required_idx = [(f, index[f]) for f in required]
                numeric_idx = [(f, index[f]) for f in numeric]
                count_idx = index.get(count_field) if count_field else None
                collect_idx = index.get(collect_field) if collect_field else None
                continue
            if not line.strip():
                continue  # pandas (RecBole's reader) skips blank lines
            parts = line.split(sep)
            if len(parts) != len(header):
                what = "is missing" if len(parts) < len(header) else "has extra"
                raise InputError(
                    f"{path}, line {lineno}: {len(parts)} fields, the header has {len(header)} "
                    f"({', '.join(names)}); the row {what} field(s). Fix: make every row have exactly one value "
                    f"per header column, separated by {sep!r}."
                )
            for name, i in required_idx:
                if not parts[i].strip():
                    raise InputError(
                        f"{path}, line {lineno}: field {name!r} is empty. Fix: fill it in or drop the row."
                    )
            for name, i in numeric_idx:
                try:
                    number = float(parts[i])
                except ValueError:
                    number = float("nan")
                if not math.isfinite(number):
                    raise InputError(
                        f"{path}, line {lineno}: {name}={parts[i]!r} is not a finite number (column type float). "
                        "Fix: write a number such as 978300760."
                    )
            if count_idx is not None:
                counts[parts[count_idx].strip()] += 1
            if collect_idx is not None:
                values.add(parts[collect_idx].strip())
            rows += 1
    if header is None:
        raise InputError(f"{path} is empty. Fix: write a header line 'name:type<TAB>...' and one row per record.")
    return AtomicScan(tuple(header), rows, tuple(counts.items()), tuple(sorted(values)))


def _parse_header(path: Path, line: str, sep: str) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for column in line.split(sep):
        name, colon, kind = column.strip().partition(":")
        if not colon or not name:
            raise InputError(
                f"{path}, line 1 (header): column {column!r} has no type. Fix: write each column as "
                f"'name:type' with a type in {ATOMIC_TYPES}, e.g. 'user_id:token'."
            )
        if kind not in ATOMIC_TYPES:
            raise InputError(
                f"{path}, line 1 (header): {column!r} has unknown type {kind!r}. Fix: use one of {ATOMIC_TYPES}."
            )
        if any(name == n for n, _ in fields):
            raise InputError(f"{path}, line 1 (header): column {name!r} appears twice. Fix: rename or remove one.")
        fields.append((name, kind))
    return fields


def _loaded(config: Any, suffix: str) -> bool:
    load_col = config["load_col"]
    return load_col is None or (isinstance(load_col, dict) and suffix in load_col)


def _min_interactions(config: Any, sequential: bool) -> int | None:
    """Interactions a user needs for a training, a validation and a test example under LS."""
    split = (config["eval_args"] or {}).get("split") or {}
    if not isinstance(split, dict) or "LS" not in split:
        return None
    phases = 2 if split["LS"] == "valid_and_test" else 1
    # general models: one interaction per phase + 1 to train on; sequential ones predict each
    # interaction after the first from its prefix, so they need one more.
    return phases + 1 + (1 if sequential else 0)


def check_atomic_files(config: Any, sequential: bool) -> AtomicScan:
    """Scan the dataset's atomic files the run will read; returns the ``.inter`` scan."""
    folder = Path(config["data_path"])
    dataset = config["dataset"]
    sep = config["field_separator"] or "\t"
    encoding = config["encoding"] or "utf-8"
    uid, iid, tid = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["TIME_FIELD"]
    order_by_time = (config["eval_args"] or {}).get("order") == "TO"
    inter = folder / f"{dataset}.inter"
    scan = scan_atomic_file(
        inter, sep, encoding, required=(uid, iid, *((tid,) if order_by_time else ())),
        numeric=(tid,) if order_by_time else (), count_field=uid, collect_field=iid,
    )
    if scan.rows == 0:
        raise InputError(f"{inter} has a header but no interactions. Fix: add one row per interaction.")
    need = _min_interactions(config, sequential)
    counts = dict(scan.per_key)
    if need is not None and not any(c >= need for c in counts.values()):
        raise InputError(
            f"{inter}: every user has at most {max(counts.values())} interaction(s); leave-one-out "
            f"({config['eval_args']['split']}) needs users with >= {need} for a training, validation and test "
            "example, so nothing would be trained or evaluated. Fix: use a dataset with longer histories."
        )
    for suffix, key_field in (("item", iid), ("user", uid)):
        path = folder / f"{dataset}.{suffix}"
        if path.is_file() and _loaded(config, suffix):
            scan_atomic_file(path, sep, encoding, required=(key_field,))
    return scan


# ----------------------------------------------------------------------------- stage inputs


def _filters_active(config: Any) -> bool:
    """Whether RecBole may drop items, so the raw ``.inter`` item set is a superset of the dataset's."""
    for key in ("user_inter_num_interval", "item_inter_num_interval"):
        value = config[key]
        if value not in (None, "[0,inf)", "[0, inf)"):
            return True
    return bool(config["val_interval"]) or bool(config["rm_dup_inter"])


def uses_tokenizer(spec: Any, config: Any) -> str | None:
    """The tokenizer a model relies on (``LETTER``, ``RQVAE`` or an index path), else None."""
    method = getattr(spec.model_class, "method", None)
    if method in ("LETTER", "RQVAE"):
        return method
    needs_ids = "semantic_id_table" in getattr(spec.model_class, "required_stages", ())
    value = config["item_tokenizer"]
    if value is None and not needs_ids:
        return None
    if config["semantic_id_table"] is not None:
        return None  # handed in by the caller: no stage runs
    value = value or "LETTER"
    upper = str(value).upper()
    return upper if upper in ("LETTER", "RQVAE") else str(value)


_REMEDY = re.compile(
    r"(?:: |; )(?=(?:add|check|clean|correct|download|fit|give|install|keep|pass|point|put|rebuild|recompute|refit|"
    r"remove|reshape|save|set|supply|use|write)\b)"
)


def _as_input_error(err: Exception) -> InputError:
    """A lower layer's one-line ``ValueError`` as an :class:`InputError` with an explicit ``Fix:``.

    Those messages end in ``<problem>: <remedy>`` (or ``; <remedy>``); the remedy becomes the fix.
    """
    message = str(err).strip()
    if "fix" not in message.lower():
        found = list(_REMEDY.finditer(message))
        if found:
            cut = found[-1]
            message = f"{message[: cut.start()]}. Fix: {message[cut.end():]}"
        else:
            message += " Fix: correct the value or file named above."
    return InputError(message)


def check_stage_inputs(config: Any, spec: Any, scan: AtomicScan) -> None:
    """The files and settings the semantic-ID stages of this model will read."""
    tokenizer = uses_tokenizer(spec, config)
    if tokenizer is None:
        return
    from recbole_letter.data.item_matrix import load_item_matrix
    from recbole_letter.stages.item_tokenizer import tokenizer_config_from
    from recbole_letter.tokenization.semantic_ids import load_index_json

    tokens = [] if _filters_active(config) else list(scan.values)
    if tokenizer not in ("LETTER", "RQVAE"):
        path = Path(tokenizer)
        if not path.is_file():
            raise InputError(
                f"item_tokenizer={tokenizer!r} is neither LETTER, RQVAE nor an existing index.json file. "
                "Fix: --item_tokenizer=LETTER or the path of a LETTER/LC-Rec index.json."
            )
        try:
            load_index_json(path, tokens)
        except (ValueError, FileNotFoundError) as err:
            raise _as_input_error(err) from None
        return
    try:
        tok_cfg = tokenizer_config_from(config, tokenizer)
    except (ValueError, TypeError) as err:
        raise _as_input_error(err) from None
    for key in ("item_embedding_file", "cf_embedding_file"):
        path = config[key]
        if not path or (key == "cf_embedding_file" and tok_cfg.alpha <= 0):
            continue
        try:
            load_item_matrix(path, tokens, key)
        except (ValueError, FileNotFoundError) as err:
            raise _as_input_error(err) from None
    if not config["item_embedding_file"]:
        _check_text_stage(config)
    if tok_cfg.alpha > 0 and not config["cf_embedding_file"]:
        from recbole_letter.stages.cf_embeddings import cf_run_config

        try:
            cf_config, cf_class, cf_overrides = cf_run_config(config)
        except InputError:
            raise
        except (ValueError, TypeError) as err:
            raise _as_input_error(err) from None
        check_values(cf_config, cf_class.__name__, (), cf_overrides, (), context="cf_config")


def _check_text_stage(config: Any) -> None:
    """Item text -> embeddings will run: the ``.item`` file, its columns and the encoder must exist."""
    from recbole_letter.data.item_text import default_text_fields, item_file_for
    from recbole_letter.stages.text_embeddings import encoder_settings, resolve_text_encoder

    item_file = item_file_for(config)
    if not item_file.is_file():
        raise InputError(
            f"{item_file} not found: item text for the text-embedding stage comes from <data_path>/<dataset>.item. "
            "Fix: add the .item file, or set --item_embedding_file to a precomputed [n_items, d] .npy."
        )
    sep = config["field_separator"] or "\t"
    scan = scan_atomic_file(item_file, sep, config["encoding"] or "utf-8", required=(config["ITEM_ID_FIELD"],))
    types = dict(scan.fields)
    fields = config["item_text_fields"]
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",") if f.strip()]
    if fields is None:
        fields = default_text_fields(types, config["ITEM_ID_FIELD"])
        if not fields:
            raise InputError(
                f"{item_file} has no token/token_seq text column. Fix: set --item_text_fields=[<column>,...] "
                "or --item_embedding_file."
            )
    elif not isinstance(fields, (list, tuple)) or not fields or not all(isinstance(f, str) for f in fields):
        raise InputError(f"item_text_fields={fields!r} must be a non-empty list of column names. Fix: e.g. --item_text_fields=[title].")
    missing = [f for f in fields if f not in types]
    if missing:
        available = [n for n in types if n != config["ITEM_ID_FIELD"]]
        raise InputError(
            f"item_text_fields {missing} not in {item_file} (columns: {available}). Fix: e.g. --item_text_fields=[{available[0] if available else 'title'}]."
        )
    spec = config["text_encoder"] or "minilm"
    try:
        resolve_text_encoder(str(spec), encoder_settings(config))  # cheap: models load on first encode
    except (ValueError, OSError, ImportError) as err:
        raise _as_input_error(err) from None


# ----------------------------------------------------------------------------- whole command


def check_processes(overrides: Mapping[str, Any]) -> None:
    """RecBole's multi-process keys: ranks ``offset .. offset+nproc-1`` must exist in ``world_size``."""
    values: dict[str, int] = {}
    for key, default in (("nproc", 1), ("world_size", -1), ("offset", 0)):
        raw = overrides.get(key)
        try:
            values[key] = default if raw in (None, "") else int(str(raw))
        except ValueError:
            raise InputError(f"--{key}={raw}: not an integer. Fix: e.g. --{key}=2.") from None
    if values["nproc"] < 1:
        raise InputError(f"--nproc={values['nproc']} must be >= 1. Fix: e.g. --nproc=2.")
    world = values["world_size"] if values["world_size"] > 0 else values["nproc"]
    if values["offset"] < 0 or values["offset"] + values["nproc"] > world:
        raise InputError(
            f"offset {values['offset']} + nproc {values['nproc']} exceeds world_size {world}: those ranks would not "
            "exist. Fix: world_size = processes over all nodes, offset = ranks started on earlier nodes."
        )
    for key in ("ddp_timeout", "ddp_stage_timeout"):
        raw = overrides.get(key)
        if raw in (None, ""):
            continue
        try:
            seconds = float(str(raw))
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise InputError(f"--{key}={raw}: must be a number of seconds > 0. Fix: e.g. --{key}=1800.")


def validate_config(
    config: Any,
    spec: Any,
    overrides: Mapping[str, Any] | None = None,
    user_files: Sequence[str] = (),
) -> None:
    """Every check for one model's built config (values, checkpoint_dir, atomic files, stage inputs)."""
    from recbole.utils import ModelType

    check_values(config, spec.name, spec.config_files, overrides, user_files)
    check_checkpoint_dir(config)
    scan = check_atomic_files(config, sequential=spec.model_class.type == ModelType.SEQUENTIAL)
    check_stage_inputs(config, spec, scan)
    model_check = getattr(spec.model_class, "check_run_inputs", None)  # a model's own files (STORE: --new_items)
    if model_check is not None:
        try:
            model_check(config, None if _filters_active(config) else set(scan.values))
        except InputError:
            raise
        except (ValueError, FileNotFoundError) as err:
            raise _as_input_error(err) from None


def validate_command(
    models: Sequence[str],
    dataset: str,
    config_files: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[tuple[Any, Any]]:
    """Resolve every model and validate its whole run; ``[(config, spec), ...]`` or :class:`InputError`."""
    from recbole_letter.quick_start import build_config
    from recbole_letter.registry import resolve_model

    names = [m.strip() for m in models if m and m.strip()]
    if not names:
        raise InputError("--model names no model. Fix: e.g. --model=SASRec or --model=SASRec,TIGER.")
    specs = []
    for name in names:
        try:
            specs.append(resolve_model(name))
        except ValueError as err:
            raise _as_input_error(err) from None
    user_files = [str(f) for f in config_files or []]
    for f in user_files:
        load_yaml_file(f)
    overrides = dict(overrides or {})
    built = []
    check_processes(overrides)
    for spec in specs:
        try:
            config, _ = build_config(spec, dataset, user_files, overrides)
        except InputError:
            raise
        except (ValueError, FileNotFoundError, KeyError, TypeError) as err:
            raise _as_input_error(err) from None
        validate_config(config, spec, overrides, user_files)
        built.append((config, spec))
    return built
