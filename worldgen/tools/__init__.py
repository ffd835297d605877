"""Tools the world's agents use: image generation and pixel-level image analysis."""

from worldgen.tools.image_analysis import ImageFacts, analyse_image, describe_image
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
    "ImageFacts",
    "analyse_image",
    "describe_image",
]
