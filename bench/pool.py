"""Memory and resolve time of graph nodes sharing one checkpoint through the model pool.

A random UNet (~69 MB of float32 weights, diffusers layout, safetensors) is written to a
temporary folder; nothing is downloaded. Each case runs in its own subprocess so that the
resident set sizes (VmRSS from /proc/self/status; psutil is not installed) do not mix:

* ``one``: a graph with 1 UNet node;
* ``shared``: a graph with 8 UNet nodes on the same folder (the pool's default);
* ``unshared``: 8 UNet nodes with ``share: false`` (8 independent copies).

Each prints the RSS growth over the process after imports, with every weight read once
(safetensors may be memory-mapped, and untouched pages would not count). Reported: MB of each case, the
ratio shared / one model (target ≤ 1.15) and unshared / one, and the time of the 2nd–8th
resolve in the shared case: the pool lookup alone (``pool.get`` on a loaded key; target
< 1 ms) and the whole ``add_node`` (block construction + pool lookup).

Run: ``.venv/bin/python bench/pool.py``
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NODES = 8


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def build_checkpoint(folder: Path) -> Path:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(64, 128, 256), layers_per_block=2, sample_size=16, in_channels=4,
        out_channels=4, cross_attention_dim=256, attention_head_dim=8, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def run_case(case: str, folder: str) -> dict[str, float]:
    """In a fresh process: build the nodes of `case`, report RSS growth and timings."""
    import torch

    torch.set_num_threads(1)
    from diffusers import UNet2DConditionModel

    import worldgen.blocks.diffusion  # noqa: F401  registers the block types
    from worldgen.engine import Graph
    from worldgen.local_models.pool import default_pool

    gc.collect()
    base = rss_mb()
    graph = Graph(case)
    count = 1 if case == "one" else NODES
    config = {"model_id": folder, **({"share": False} if case == "unshared" else {})}
    add_times = []
    for i in range(count):
        start = time.perf_counter()
        graph.add_node(f"unet{i}", "backbone/unet2d_condition", config=config, auto_connect=False)
        add_times.append(time.perf_counter() - start)
    with torch.no_grad():  # fault every weight page in (mmapped safetensors load lazily)
        for i in range(count):
            for t in graph.get_node(f"unet{i}").block.module.state_dict().values():
                t.sum()
    gc.collect()
    grown = rss_mb() - base
    modules = {id(graph.get_node(f"unet{i}").block.module) for i in range(count)}

    pool = default_pool()
    options = {"use_safetensors": True, "low_cpu_mem_usage": False}
    from diffusers.utils import is_accelerate_available

    options["low_cpu_mem_usage"] = is_accelerate_available()
    lookups = []
    for _ in range(NODES - 1):  # the 2nd–8th resolve of the loaded key
        start = time.perf_counter()
        pool.get(folder, None, cls=UNet2DConditionModel, subfolder="unet", options=options)
        lookups.append(time.perf_counter() - start)
    return {
        "rss_mb": grown, "distinct_modules": len(modules), "loads": pool.stats()["loads"],
        "weights_mb": pool.stats()["bytes"] / 2**20,
        "add_node_2_8_ms": statistics.median(add_times[1:]) * 1e3 if count > 1 else float("nan"),
        "first_add_node_s": add_times[0],
        "lookup_2_8_ms": statistics.median(lookups) * 1e3, "lookup_2_8_max_ms": max(lookups) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.folder)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = str(build_checkpoint(Path(tmp) / "unet-checkpoint"))
        results = {}
        for case in ("one", "shared", "unshared"):
            out = subprocess.run(
                [sys.executable, __file__, "--case", case, "--folder", folder],
                check=True, capture_output=True, text=True,
            ).stdout
            results[case] = json.loads(out.strip().splitlines()[-1])

    one, shared, unshared = results["one"], results["shared"], results["unshared"]
    print(f"UNet weights: {one['weights_mb']:.1f} MB (float32)")
    for case, r in results.items():
        print(f"{case:>9}: RSS +{r['rss_mb']:7.1f} MB   distinct modules {r['distinct_modules']}   "
              f"first add_node {r['first_add_node_s']:.2f} s")
    print(f"shared {NODES} nodes / one model:   {shared['rss_mb'] / one['rss_mb']:.3f}  (target <= 1.15)")
    print(f"unshared {NODES} nodes / one model: {unshared['rss_mb'] / one['rss_mb']:.3f}")
    print(f"2nd-8th resolve, pool.get: median {shared['lookup_2_8_ms'] * 1e3:.1f} us, "
          f"max {shared['lookup_2_8_max_ms'] * 1e3:.1f} us  (target < 1 ms); "
          f"loads in the shared process: {shared['loads']}")
    print(f"2nd-8th add_node (block + pool): median {shared['add_node_2_8_ms']:.3f} ms")


if __name__ == "__main__":
    main()
