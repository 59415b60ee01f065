"""Prompt templates of the LC-Rec tasks, read from a YAML data file shipped with the package.

Templates are data, not code, so a user can swap in their own wording (``lcrec_templates_file``)
without touching the model. The file is validated when loaded: every task has templates, each
template uses only the placeholders its task provides, and ``seqrec`` has at least
:data:`MIN_SEQREC_TEMPLATES` (LC-Rec averages test results over its templates).
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import yaml

DEFAULT_TEMPLATES = Path(__file__).resolve().parent / "templates.yaml"
MIN_SEQREC_TEMPLATES = 10

#: Placeholders each task may use (what the sample builder can fill in).
TASK_FIELDS: dict[str, frozenset[str]] = {
    "seqrec": frozenset({"history", "item"}),
    "item2index": frozenset({"title", "description", "item"}),
    "index2item": frozenset({"title", "description", "item"}),
    "fusionseqrec": frozenset({"history", "history_titles", "title", "description", "item"}),
    "itemsearch": frozenset({"history", "query", "preference", "item"}),
    "preferenceobtain": frozenset({"history", "preference"}),
}
TASKS = tuple(TASK_FIELDS)
#: A response that is exactly this is a code target (generated under the prefix constraint).
CODE_RESPONSE = "{item}"


def placeholders(text: str) -> set[str]:
    """Names of the ``{field}`` placeholders in ``text``."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@dataclass(frozen=True)
class Template:
    """One instruction/response pair of a task."""

    instruction: str
    response: str

    @property
    def fields(self) -> set[str]:
        """Every placeholder the template needs."""
        return placeholders(self.instruction) | placeholders(self.response)

    @property
    def targets_codes(self) -> bool:
        """True if the answer is the target item's code tokens."""
        return self.response.strip() == CODE_RESPONSE


class PromptTemplates:
    """The wrapper and the templates of every task (see ``templates.yaml``)."""

    def __init__(self, wrapper: str, tasks: Mapping[str, list[Template]], source: str = "<memory>") -> None:
        if placeholders(wrapper) != {"instruction"}:
            raise ValueError(f"{source}: the wrapper must contain exactly one placeholder, {{instruction}}")
        unknown = set(tasks) - set(TASK_FIELDS)
        if unknown:
            raise ValueError(f"{source}: unknown task(s) {sorted(unknown)}; known: {', '.join(TASKS)}")
        for task, templates in tasks.items():
            if not templates:
                raise ValueError(f"{source}: task {task!r} has no templates")
            for i, template in enumerate(templates):
                extra = template.fields - TASK_FIELDS[task]
                if extra:
                    raise ValueError(
                        f"{source}: {task} template {i} uses {sorted(extra)}, which {task} cannot fill "
                        f"(allowed: {sorted(TASK_FIELDS[task])})"
                    )
                if "{item}" in template.response and not template.targets_codes:
                    raise ValueError(f"{source}: {task} template {i}: an {{item}} response must be exactly '{{item}}'")
        seqrec = tasks.get("seqrec", [])
        if len(seqrec) < MIN_SEQREC_TEMPLATES:
            raise ValueError(f"{source}: seqrec needs at least {MIN_SEQREC_TEMPLATES} templates, got {len(seqrec)}")
        if not all(t.targets_codes for t in seqrec):
            raise ValueError(f"{source}: every seqrec template must answer with '{{item}}'")
        self.wrapper = wrapper
        self.tasks = {task: list(templates) for task, templates in tasks.items()}

    @classmethod
    def load(cls, path: str | Path | None = None) -> "PromptTemplates":
        """Read and validate a template file (default: the one shipped with the package)."""
        file = Path(path) if path else DEFAULT_TEMPLATES
        if not file.is_file():
            raise FileNotFoundError(f"prompt template file {file} not found; fix lcrec_templates_file")
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or "wrapper" not in raw or not isinstance(raw.get("tasks"), dict):
            raise ValueError(f"{file}: expected a mapping with 'wrapper' and 'tasks'")
        tasks: dict[str, list[Template]] = {}
        for task, entries in raw["tasks"].items():
            if not isinstance(entries, list):
                raise ValueError(f"{file}: tasks.{task} must be a list of {{instruction, response}}")
            parsed = []
            for i, entry in enumerate(entries):
                if not isinstance(entry, dict) or set(entry) != {"instruction", "response"}:
                    raise ValueError(f"{file}: tasks.{task}[{i}] needs exactly the keys instruction and response")
                parsed.append(Template(str(entry["instruction"]), str(entry["response"])))
            tasks[task] = parsed
        return cls(str(raw["wrapper"]), tasks, source=str(file))

    def templates(self, task: str) -> list[Template]:
        """Templates of ``task``."""
        if task not in self.tasks:
            raise KeyError(f"no templates for task {task!r}; the file defines {sorted(self.tasks)}")
        return self.tasks[task]

    def usable(self, task: str, available: set[str]) -> list[int]:
        """Indices of ``task``'s templates whose fields are all ``available`` (e.g. no description)."""
        return [i for i, t in enumerate(self.templates(task)) if t.fields <= available]

    def fill(self, task: str, index: int, fields: Mapping[str, str]) -> tuple[str, str]:
        """``(prompt, response)`` of template ``index`` of ``task``; the prompt ends where the answer starts."""
        template = self.templates(task)[index]
        missing = template.fields - set(fields)
        if missing:
            raise KeyError(f"{task} template {index} needs {sorted(missing)}")
        prompt = self.wrapper.format(instruction=template.instruction.format(**fields))
        return prompt, template.response.format(**fields)
