"""Learned, cached stages a model needs before it can be built (text and CF embeddings, the
item tokenizer) and the stage cache they share.

A model class lists the stages it needs in ``required_stages``; the runner calls
:func:`resolve_stages` before constructing it, so each result reaches the model as
``config[<stage name>]`` and building a model never trains anything.
"""
from __future__ import annotations

from typing import Any, Callable


def _semantic_id_table(config: Any, dataset: Any) -> Any:
    from recbole_letter.stages.item_tokenizer import semantic_id_table_for

    return semantic_id_table_for(config, dataset)


# stage name (the config key its result is stored under) -> resolver(config, dataset)
STAGE_RESOLVERS: dict[str, Callable[[Any, Any], Any]] = {
    "semantic_id_table": _semantic_id_table,
}


def resolve_stages(model_class: type, config: Any, dataset: Any) -> None:
    """Run (or load from the cache) every stage ``model_class.required_stages`` names and store
    each result in ``config[<name>]``. A value already in the config is kept, so a caller can
    hand a model its own table."""
    for name in getattr(model_class, "required_stages", ()):
        if name not in STAGE_RESOLVERS:
            raise ValueError(
                f"{model_class.__name__} requires the stage {name!r}, which is unknown. "
                f"Fix: use one of {sorted(STAGE_RESOLVERS)} or add a resolver to recbole_letter.stages."
            )
        if config[name] is None:
            config[name] = STAGE_RESOLVERS[name](config, dataset)
