"""Tools the world's agents use: image generation (a renderer as a tool, or the
text_to_image graph on a diffusers folder), pixel-level image analysis, and local models
(text generation, image description, embeddings) as LangChain tools."""

from worldgen.tools.image_analysis import ImageFacts, analyse_image, describe_image
from worldgen.tools.local_models import (
    TransformersEmbeddings,
    embedding_tool,
    image_description_tool,
    local_chat_model,
    text_generation_tool,
    text_to_image_graph_tool,
)
from worldgen.tools.text_to_image import (
    DiffusersTextToImage,
    ProceduralRenderer,
    TextToImage,
    resolve_text_to_image,
    text_to_image_tool,
)

__all__ = [
    "TextToImage",
    "ProceduralRenderer",
    "DiffusersTextToImage",
    "resolve_text_to_image",
    "text_to_image_tool",
    "text_to_image_graph_tool",
    "ImageFacts",
    "analyse_image",
    "describe_image",
    "TransformersEmbeddings",
    "embedding_tool",
    "image_description_tool",
    "local_chat_model",
    "text_generation_tool",
]
