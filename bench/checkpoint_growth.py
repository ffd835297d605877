"""Bytes added to checkpoints.sqlite per pass when every pass makes one 512x512 PNG.

Side A: a worldgen World whose Creator renders a 512x512 random-noise image (a fresh
seed each pass, so the content-addressed artifact store cannot deduplicate it) and
stores it with ``state["world"].artifacts.put_image(...)``; block 3 holds only the
reference. The other transitions are trivial, so from the second pass on all six run.

Side B: a raw LangGraph graph with the same six-node cycle whose creator keeps the PNG
bytes in the state (``block3``), cleared again by development the next pass as the World
clears its blocks — on the same SqliteSaver kind (a connection opened like the World's:
WAL, same isolation level and synchronous setting, read from the World at run time).

Size = main database file + WAL file, measured after ``PRAGMA wal_checkpoint(TRUNCATE)``
(so the WAL is folded into the database and truncated) before and after the measured
passes. Both sides run the same passes, interleaved.

Informative rows (``--no-variants`` skips them) put the World's number in context: the
same raw graph with no image at all (what LangGraph + SqliteSaver cost for this shape),
the World's graph run with durability="exit", and the World on a SqliteSaver that
numbers channel versions with plain integers (SqliteSaver's own versions are 52-character
strings, stored twice per channel in every checkpoint).

Run: ``.venv/bin/python bench/checkpoint_growth.py [--passes 10] [--no-variants]``
"""

from __future__ import annotations

import argparse
import io
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from PIL import Image

from worldgen import World

TARGET_KB = 20.0
SIZE = 512
CYCLE = ("philosopher", "author", "world_update", "development", "architect", "creator")


def noise_image(seed: int) -> Image.Image:
    """A 512x512 RGB random-noise image: incompressible, so the PNG is ~770 KB."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class Seeds:
    """One fresh seed per creator call (the same sequence on both sides)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        return self.n


# --------------------------------------------------------------------------------------
# side A: the World (artifact refs in block 3)
# --------------------------------------------------------------------------------------
def world_stages(seeds: Seeds) -> dict[str, Any]:
    def creator(state: dict[str, Any]) -> dict[str, Any]:
        seed = seeds()
        ref = state["world"].artifacts.put_image(noise_image(seed), slot="scene", meta={"seed": seed})
        return {"block3": {"items": [ref.model_dump(mode="json")]}}

    return {
        "philosopher": lambda s: {"block4": "a field of coloured noise"},
        "author": lambda s: {"block5": "the noise settled"},
        "world_update": lambda s: {},
        "development": lambda s: {"block1": "more noise"},
        "architect": lambda s: {"block2": "draw noise"},
        "creator": creator,
    }


# --------------------------------------------------------------------------------------
# side B: a raw LangGraph world keeping the PNG bytes in its state
# --------------------------------------------------------------------------------------
class RawState(TypedDict, total=False):
    block1: str | None
    block2: str | None
    block3: bytes | None
    block4: str | None
    block5: str | None


def raw_world(conn: sqlite3.Connection, seeds: Seeds, image: bool = True):
    nodes = {
        "philosopher": lambda s: {"block4": "a field of coloured noise"},
        "author": lambda s: {"block5": "the noise settled"},
        "world_update": lambda s: {},
        # like the World's Development: a new intent, the other blocks cleared
        "development": lambda s: {"block1": "more noise", "block2": None, "block3": None,
                                  "block4": None, "block5": None},
        "architect": lambda s: {"block2": "draw noise"},
        "creator": (lambda s: {"block3": png_bytes(noise_image(seeds()))}) if image else (lambda s: {"block3": b"-"}),
    }
    builder = StateGraph(RawState)
    previous = START
    for name in CYCLE:
        builder.add_node(name, nodes[name])
        builder.add_edge(previous, name)
        previous = name
    builder.add_edge(previous, END)
    return builder.compile(checkpointer=SqliteSaver(conn))


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------
def connect_like(path: Path, like: sqlite3.Connection) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=like.isolation_level)
    conn.execute(f"PRAGMA journal_mode={like.execute('PRAGMA journal_mode').fetchone()[0]}")
    conn.execute(f"PRAGMA synchronous={like.execute('PRAGMA synchronous').fetchone()[0]}")
    return conn


def db_bytes(conn: sqlite3.Connection, path: Path) -> int:
    """Database + WAL bytes on disk, after folding the WAL into the database."""
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        raise RuntimeError(f"{path.name}: the WAL checkpoint was blocked by a reader")
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


class IntVersionSaver(SqliteSaver):
    """What-if: SqliteSaver with integer channel versions (the BaseCheckpointSaver default)."""

    def get_next_version(self, current: Any, channel: Any) -> int:
        if current is None:
            return 1
        if isinstance(current, str):
            current = int(current.split(".")[0])
        return int(current) + 1


def growth_kb(conn: sqlite3.Connection, path: Path, one_pass: Any, warmup: int, passes: int) -> float:
    for _ in range(warmup):
        one_pass()
    before = db_bytes(conn, path)
    for _ in range(passes):
        one_pass()
    return (db_bytes(conn, path) - before) / passes / 1024


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=10, help="measured passes per side")
    parser.add_argument("--warmup", type=int, default=2, help="passes before measuring (>= 2: steady state)")
    parser.add_argument("--no-variants", action="store_true", help="only the headline comparison")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="worldgen-bench-") as tmp:
        tmp_path = Path(tmp)
        root = tmp_path / "world"
        world = World.from_template("canon", root=root, stages=world_stages(Seeds()))
        world_conn: sqlite3.Connection = world.graph.checkpointer.conn  # type: ignore[union-attr]
        world_db = root / "checkpoints.sqlite"

        raw_db = tmp_path / "raw.sqlite"
        raw_conn = connect_like(raw_db, world_conn)
        raw = raw_world(raw_conn, Seeds())
        raw_cfg = {"configurable": {"thread_id": "main"}}

        def world_pass() -> list[str]:
            return world.invoke().ran()

        def raw_pass() -> None:
            raw.invoke({}, raw_cfg, durability="sync")

        for _ in range(max(args.warmup, 2)):
            ran = world_pass()
            raw_pass()
        if ran != list(CYCLE):
            print(f"unexpected: a steady-state World pass ran {ran}", file=sys.stderr)
            return 1

        w0, r0 = db_bytes(world_conn, world_db), db_bytes(raw_conn, raw_db)
        art0, states0 = folder_bytes(root / "artifacts"), folder_bytes(root / "states")
        store0 = sum(p.stat().st_size for p in root.glob("store.sqlite*"))
        for _ in range(args.passes):
            world_pass()
            raw_pass()
        w1, r1 = db_bytes(world_conn, world_db), db_bytes(raw_conn, raw_db)
        store1 = sum(p.stat().st_size for p in root.glob("store.sqlite*"))
        art1, states1 = folder_bytes(root / "artifacts"), folder_bytes(root / "states")

        last = world.state.block3
        assert last is not None and last.items and last.items[0].mime == "image/png", last
        png_kb = world.artifacts.path(last.items[0]).stat().st_size / 1024
        isolation = world_conn.isolation_level
        world.close()
        raw_conn.close()

    n = args.passes
    world_kb, raw_kb = (w1 - w0) / n / 1024, (r1 - r0) / n / 1024
    print(f"checkpoint growth: one {SIZE}x{SIZE} PNG per pass (random noise, ~{png_kb:.0f} KB each), "
          f"{n} passes, SqliteSaver, durability='sync'")
    print(f"size = db + wal after PRAGMA wal_checkpoint(TRUNCATE); checkpointer isolation_level={isolation!r}")
    print()
    print(f"  worldgen checkpoints.sqlite : {world_kb:9.1f} KB/pass   (target <= {TARGET_KB:.0f} KB: "
          f"{'OK' if world_kb <= TARGET_KB else 'ABOVE TARGET'})")
    print(f"  raw LangGraph, PNG in state : {raw_kb:9.1f} KB/pass")
    if world_kb > 0:
        print(f"  ratio raw/worldgen          : {raw_kb / world_kb:9.1f}x   (worldgen/raw = {world_kb / raw_kb:.4f})")
    print()
    print("  where the World's bytes went instead (per pass):")
    print(f"    artifacts/ (the PNG files)  : {(art1 - art0) / n / 1024:9.1f} KB")
    print(f"    store.sqlite* (content)     : {(store1 - store0) / n / 1024:9.1f} KB")
    print(f"    states/ (JSON snapshots)    : {(states1 - states0) / n / 1024:9.1f} KB")
    if not args.no_variants:
        _variants(args, world_kb)
    print(f"\n(total {time.perf_counter() - started:.1f} s)")
    return 0


def _variants(args: argparse.Namespace, world_kb: float) -> None:
    n, warmup = args.passes, max(args.warmup, 2)
    print()
    print("  context (checkpoints.sqlite KB/pass; same measurement):")
    with tempfile.TemporaryDirectory(prefix="worldgen-bench-") as tmp:
        tmp_path = Path(tmp)

        # the World's checkpointer connection settings, to copy
        probe = World.from_template("canon", root=tmp_path / "probe", stages=world_stages(Seeds()))
        like: sqlite3.Connection = probe.graph.checkpointer.conn  # type: ignore[union-attr]

        path = tmp_path / "raw-noimage.sqlite"
        conn = connect_like(path, like)
        graph, cfg = raw_world(conn, Seeds(), image=False), {"configurable": {"thread_id": "main"}}
        kb = growth_kb(conn, path, lambda: graph.invoke({}, cfg, durability="sync"), warmup, n)
        print(f"    raw LangGraph, same six-node cycle, no image    : {kb:7.1f}  (LangGraph + SqliteSaver floor)")
        conn.close()

        root = tmp_path / "exit"
        world = World.from_template("canon", root=root, stages=world_stages(Seeds()))
        wconn = world.graph.checkpointer.conn  # type: ignore[union-attr]
        wcfg = {"configurable": {"thread_id": "main"}, "recursion_limit": 10_000}  # as World.invoke
        kb = growth_kb(wconn, root / "checkpoints.sqlite",
                       lambda: world.graph.invoke({"num_steps": 1, "action": None}, wcfg, durability="exit"),
                       warmup, n)
        print(f"    World graph, durability='exit' (1 checkpoint)   : {kb:7.1f}  (no per-transition resume)")
        world.close()

        root = tmp_path / "intversions"
        root.mkdir()
        conn = connect_like(root / "checkpoints.sqlite", like)
        world = World(world_stages(Seeds()), root=root, checkpointer=IntVersionSaver(conn))
        kb = growth_kb(conn, root / "checkpoints.sqlite", world.invoke, warmup, n)
        print(f"    World, SqliteSaver with integer channel versions: {kb:7.1f}  (vs {world_kb:.1f} as is)")
        world.close()

        # what one World checkpoint holds
        _anatomy(probe)
        probe.close()


def _anatomy(world: World) -> None:
    saver = world.graph.checkpointer
    conn: sqlite3.Connection = saver.conn  # type: ignore[union-attr]

    def counts() -> tuple[int, int]:
        return (conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0],
                conn.execute("SELECT COUNT(*) FROM writes").fetchone()[0])

    world.invoke()
    world.invoke()  # steady state from here
    (c0, w0) = counts()
    world.invoke()
    (c1, w1) = counts()
    rows = conn.execute("SELECT type, checkpoint FROM checkpoints ORDER BY checkpoint_id DESC LIMIT ?",
                        (c1 - c0,)).fetchall()
    sizes: dict[str, list[int]] = {}
    for type_, blob in rows:
        checkpoint = saver.serde.loads_typed((type_, blob))  # type: ignore[union-attr]
        sizes.setdefault("whole blob", []).append(len(blob))
        for key in ("channel_versions", "versions_seen", "channel_values"):
            sizes.setdefault(key, []).append(len(saver.serde.dumps_typed(checkpoint[key])[1]))  # type: ignore[union-attr]
        for key, value in checkpoint["channel_values"].items():
            sizes.setdefault(f"  channel_values[{key}]", []).append(len(saver.serde.dumps_typed(value)[1]))  # type: ignore[union-attr]
    print(f"  anatomy of the World's checkpoints: {c1 - c0} checkpoints and {w1 - w0} write rows per pass;")
    print("  mean bytes per checkpoint (channel values under 10 B left out):")
    for key, values in sizes.items():
        mean = sum(values) / len(values)
        if mean >= 10 or not key.startswith(" "):
            print(f"    {key:34s} {mean:6.0f} B")
    print(f"    channels in channel_versions     {len(checkpoint['channel_versions'])}: "
          f"{', '.join(sorted(checkpoint['channel_versions']))}")


if __name__ == "__main__":
    sys.exit(main())
