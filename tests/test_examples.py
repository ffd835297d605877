"""The examples run end to end as a user would run them (subprocess, no network)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_lora_world_example_trains_saves_and_reloads(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lora_world.py"), "--steps", "20", "--work", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    loss = re.search(r"loss_first=([\d.]+) loss_last=([\d.]+) decreased=(\w+)", out)
    assert loss, out
    first, last = float(loss.group(1)), float(loss.group(2))
    assert last < first and loss.group(3) == "True"
    reload = re.search(r"reload_max_abs_diff=(\S+) reload_match=(\w+)", out)
    assert reload and reload.group(2) == "True" and float(reload.group(1)) == 0.0, out
    trainable = re.search(r"trainable_params=(\d+) base_params=(\d+)", out)
    assert trainable and 0 < int(trainable.group(1)) < int(trainable.group(2)) // 10
    assert (tmp_path / "saved/adapters/lora_creator.safetensors").is_file()
    assert len(list((tmp_path / "saved/base").rglob("*.safetensors"))) == 1  # the base, once
