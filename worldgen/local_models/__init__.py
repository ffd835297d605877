"""Local generative models that run on CPU without downloading anything."""

from worldgen.local_models.chat_model import ChatTransformers, load_local_chat_model
from worldgen.local_models.gguf import (
    LoadedModel,
    LocalModelMissingError,
    cache_root,
    load_pretrained,
    load_smollm2,
    smollm2_cache_dir,
    smollm2_gguf_path,
)
from worldgen.local_models.safety import PickleCheckpointError

__all__ = [
    "ChatTransformers",
    "LoadedModel",
    "LocalModelMissingError",
    "PickleCheckpointError",
    "cache_root",
    "load_local_chat_model",
    "load_pretrained",
    "load_smollm2",
    "smollm2_cache_dir",
    "smollm2_gguf_path",
]
