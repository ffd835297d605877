"""worldgen's ``text_to_image`` graph against diffusers' `StableDiffusionPipeline`.

Both sides load the same tiny random Stable Diffusion checkpoint (built on the fly in a
temporary folder by ``tests/tiny_diffusers.py``; nothing is downloaded) and render the same
prompt with the same seed and settings (DDIM, 20 steps, 64×64, guidance 7.5). After a
warm-up the two sides are measured interleaved (A B, B A, A B, ...) so that a noisy shared
machine hurts both alike. Prints the median seconds per image of each side, the time ratio
(graph / pipeline; target ≤ 1.10) and the max absolute pixel difference (in [0, 1]).

Run: ``.venv/bin/python bench/text_to_image.py [--repeats 10] [--threads N] [--solver ddim]``
(``--threads 1`` is steadier on a busy machine: spinning OpenMP threads of two processes
fighting for 2 cores slow both sides down by an order of magnitude).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.tiny_diffusers

from diffusers import StableDiffusionPipeline  # noqa: E402

from tests.tiny_diffusers import build_tiny_stable_diffusion  # noqa: E402
from worldgen.blocks.diffusion import scheduler_class  # noqa: E402
from worldgen.engine.templates import graph_from_template  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--solver", default="ddim")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_stable_diffusion(Path(tmp) / "tiny-sd")
        graph_side, pipe_side = _sides(folder, args)
        for _ in range(args.warmup):
            graph_side()
            pipe_side()
        times: dict[str, list[float]] = {"graph": [], "pipeline": []}
        images: dict[str, np.ndarray] = {}
        sides = [("graph", graph_side), ("pipeline", pipe_side)]
        for i in range(args.repeats):
            for name, run in sides if i % 2 == 0 else sides[::-1]:
                start = time.perf_counter()
                images[name] = run()
                times[name].append(time.perf_counter() - start)

    graph_s, pipe_s = statistics.median(times["graph"]), statistics.median(times["pipeline"])
    ratio = graph_s / pipe_s
    print(f"settings: {args.solver}, {args.steps} steps, {args.size}x{args.size}, guidance {args.guidance_scale}, "
          f"seed {args.seed}, {torch.get_num_threads()} torch threads, {args.repeats} interleaved repeats")
    print(f"worldgen graph         : {graph_s:.4f} s/image (median; min {min(times['graph']):.4f})")
    print(f"StableDiffusionPipeline: {pipe_s:.4f} s/image (median; min {min(times['pipeline']):.4f})")
    print(f"time ratio graph/pipeline: {ratio:.3f} (target <= 1.10: {'ok' if ratio <= 1.10 else 'MISSED'})")
    print(f"max abs pixel difference: {np.abs(images['graph'] - images['pipeline']).max():.3e}")


def _sides(folder: Path, args: argparse.Namespace) -> tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]:
    graph = graph_from_template(
        "text_to_image", checkpoint=folder, solver=args.solver, guidance_scale=args.guidance_scale,
        num_inference_steps=args.steps, height=args.size, width=args.size, seed=args.seed,
    )
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = scheduler_class(args.solver).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def graph_side() -> np.ndarray:
        return graph.run({"prompt": PROMPT, "seed": args.seed})["image"].permute(0, 2, 3, 1).numpy()

    def pipe_side() -> np.ndarray:
        return pipe(
            PROMPT, generator=torch.Generator().manual_seed(args.seed), num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale, height=args.size, width=args.size, output_type="np",
        ).images

    return graph_side, pipe_side


if __name__ == "__main__":
    main()
