"""The package's layers: a module may import its own layer or lower ones, never a higher one.

Read with ``ast`` (nothing is imported), so imports inside functions count too: a lazy import
is still a dependency. The layers, lowest first, are listed in README "Architecture".
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recbole_letter"

# Lowest first. A module is matched by its dotted name below the package, longest prefix first.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("__init__", "compat", "atomic", "tables", "seeding", "distributed", "cpu_memory", "history_mask")),
    ("data", ("data",)),
    ("config", ("config",)),  # resolves dataset folders through data.bundled, so it sits above data
    ("stages", ("stages", "tokenization", "llm")),
    ("generation", ("generation",)),
    ("model", ("model",)),
    ("runner", ("quick_start", "registry", "cli", "tuning", "recommend", "hyper", "validate", "__main__")),
]


def layer_of(module: str) -> int | None:
    """Index of ``module``'s layer (``module`` is dotted, below the package), or None if unlisted."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def package_imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, module below the package)`` for every import of this package in ``source``, the
    text of ``module`` (relative imports are resolved against it)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
                names = [f"recbole_letter.{target}" if target else "recbole_letter"]
            else:
                names = [node.module or ""]
            # `from recbole_letter import compat` imports the submodule compat
            if names == ["recbole_letter"]:
                names = [f"recbole_letter.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "recbole_letter":
                found.append((node.lineno, "__init__"))
            elif name.startswith("recbole_letter."):
                found.append((node.lineno, name[len("recbole_letter.") :]))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    unlisted = [module_name(p) for p in SOURCES if layer_of(module_name(p)) is None]
    assert not unlisted, f"modules without a layer: {unlisted}; add them to LAYERS (and README Architecture)"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p) or "__init__")
def test_no_module_imports_a_higher_layer(path: Path):
    own = layer_of(module_name(path))
    upward = []
    source = path.read_text(encoding="utf-8")
    for line, target in package_imports(source, module_name(path), path.name == "__init__.py"):
        theirs = layer_of(target)
        if theirs is not None and own is not None and theirs > own:
            upward.append(f"line {line}: {target} ({LAYERS[theirs][0]}) from layer {LAYERS[own][0]}")
    assert not upward, f"{path.relative_to(PACKAGE.parent)} imports upward: " + "; ".join(upward)


def test_the_checker_sees_upward_imports():
    """The rules are not vacuous: lazy and relative upward imports are found and resolved."""
    source = "def f():\n    from recbole_letter.quick_start import run_models\n    from ..model import tiger\n"
    found = [target for _, target in package_imports(source, "data.probe")]
    assert found == ["quick_start", "model"]
    assert all(layer_of(t) > layer_of("data.probe") for t in found)
    assert package_imports("from recbole_letter import compat, tables\n", "cli") == [(1, "compat"), (1, "tables")]
    assert package_imports("from .kmeans import kmeans\n", "tokenization.rqvae") == [(1, "tokenization.kmeans")]
    assert layer_of("tuning.trial") == layer_of("cli") > layer_of("model.tiger") > layer_of("generation.t5_stepper")
    assert layer_of("stages.stage_cache") == layer_of("llm.backbone") == layer_of("tokenization.fit")
