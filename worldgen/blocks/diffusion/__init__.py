"""Real diffusion model blocks over diffusers/transformers, loaded from a local diffusers folder.

Importing this package registers the block types:

- ``tokenizer/clip``, ``conditioner/clip_text``, ``backbone/unet2d_condition``,
  ``solver/diffusers`` (any diffusers scheduler), ``codec/vae`` — the task roles;
- ``noise/initial`` — seeded start of a sampling trajectory;
- ``batch/concat``, ``batch/repeat``, ``batch/split``, ``loop/carry`` — graph plumbing
  that the ``text_to_image`` template (`worldgen.engine.templates`) uses for CFG batching
  and to start its denoising loop.

Guidance is the core ``guidance/cfg`` (`worldgen.blocks.roles.ClassifierFreeGuidance`).
"""

from worldgen.blocks.diffusion.backbone import UNet2DConditionBackbone
from worldgen.blocks.diffusion.batch import BatchConcat, BatchRepeat, BatchSplit
from worldgen.blocks.diffusion.codec import VAECodec, to_pil
from worldgen.blocks.diffusion.conditioner import CLIPTextConditioner
from worldgen.blocks.diffusion.loop import LoopCarry
from worldgen.blocks.diffusion.noise import InitialNoise
from worldgen.blocks.diffusion.schedulers import SCHEDULER_ALIASES, known_schedulers, scheduler_class
from worldgen.blocks.diffusion.solver import DiffusersSolver
from worldgen.blocks.diffusion.tokenizer import CLIPTokenizerBlock

__all__ = [
    "SCHEDULER_ALIASES", "BatchConcat", "BatchRepeat", "BatchSplit", "CLIPTextConditioner",
    "CLIPTokenizerBlock", "DiffusersSolver", "InitialNoise", "LoopCarry", "UNet2DConditionBackbone",
    "VAECodec", "known_schedulers", "scheduler_class", "to_pil",
]
