"""Per-pass overhead of a worldgen World against a hand-written LangGraph graph.

Side A: a World whose six transitions are trivial functions (each returns one constant
small block; World update returns {}), driven by ``world.invoke()`` (one pass per call,
the state continuing, so from the second pass on all six transitions run).

Side B: a raw ``StateGraph`` with six no-op nodes in a linear chain, each writing one
small string channel, invoked once per pass on one thread.

Both sides use the same checkpointer: worldgen's CompactSqliteSaver on a file in a temporary
folder, on a connection opened exactly like the World's own (the raw side copies the
World's connection settings — isolation level, journal mode, synchronous — read at run
time, so the comparison stays fair if worldgen/world.py changes them) and the same
durability ("sync"). After a warm-up the two sides are measured interleaved (A B, B A,
A B, ...) so that a noisy shared machine hurts both alike. Medians are reported.

Informative variants (``--no-variants`` skips them) isolate where the difference comes
from: the World's graph without the ``World.invoke`` wrapper, a raw graph shaped like the
World (intake node, conditional edges, retry policy, the same channel writes per node),
and both sides under other connection / durability settings.

Run: ``.venv/bin/python bench/cycle_overhead.py [--rounds 200] [--no-variants] [--profile]``
(each measurement stops early on a time budget, so the script stays under ~2 minutes).
"""

from __future__ import annotations

import argparse
import collections
import gc
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

from worldgen.storage import CompactSqliteSaver  # the checkpointer worlds use, on both sides
from langgraph.graph import END, START, StateGraph
from langgraph.types import Overwrite, RetryPolicy

from worldgen import World

TARGET = 1.5
CYCLE = ("philosopher", "author", "world_update", "development", "architect", "creator")

# the World's trivial transitions: each returns one constant small block
TRIVIAL_STAGES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "philosopher": lambda s: {"block4": "d"},
    "author": lambda s: {"block5": "o"},
    "world_update": lambda s: {},
    "development": lambda s: {"block1": "i"},
    "architect": lambda s: {"block2": "p"},
    "creator": lambda s: {"block3": {"items": [{"kind": "text", "uri": "artifacts/x.txt"}]}},
}


# --------------------------------------------------------------------------------------
# connections: the raw side copies the World's checkpointer connection settings
# --------------------------------------------------------------------------------------
class ConnSettings(TypedDict):
    isolation_level: str | None
    journal_mode: str
    synchronous: int


def settings_of(conn: sqlite3.Connection) -> ConnSettings:
    return {
        "isolation_level": conn.isolation_level,
        "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
        "synchronous": conn.execute("PRAGMA synchronous").fetchone()[0],
    }


def connect(path: Path, settings: ConnSettings) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=settings["isolation_level"])
    conn.execute(f"PRAGMA journal_mode={settings['journal_mode']}")
    conn.execute(f"PRAGMA synchronous={int(settings['synchronous'])}")
    return conn


def describe(settings: ConnSettings) -> str:
    sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(int(settings["synchronous"]), "?")
    iso = "autocommit (isolation_level=None)" if settings["isolation_level"] is None else (
        f"deferred transactions (isolation_level={settings['isolation_level']!r})")
    return f"journal_mode={settings['journal_mode']}, synchronous={sync}, {iso}"


# --------------------------------------------------------------------------------------
# side A: the World
# --------------------------------------------------------------------------------------
class WorldSide:
    def __init__(self, folder: Path, settings: ConnSettings | None = None):
        if settings is None:  # exactly as users get it
            self.world = World.from_template("canon", root=folder, stages=TRIVIAL_STAGES)
        else:  # the same World on a checkpointer connection with other settings
            folder.mkdir(parents=True, exist_ok=True)
            saver = CompactSqliteSaver(connect(folder / "checkpoints.sqlite", settings))
            self.world = World(TRIVIAL_STAGES, root=folder, checkpointer=saver)
        self.conn: sqlite3.Connection = self.world.graph.checkpointer.conn  # type: ignore[union-attr]
        self.cfg = {"configurable": {"thread_id": "main"}, "recursion_limit": 10_000}  # as World.invoke

    def invoke(self) -> None:
        self.world.invoke()

    def graph_invoke(self, durability: str = "sync") -> Callable[[], None]:
        """The World's compiled graph called directly, without the World.invoke wrapper."""
        graph, cfg = self.world.graph, self.cfg
        return lambda: graph.invoke({"num_steps": 1, "action": None}, cfg, durability=durability)  # type: ignore[arg-type]

    def close(self) -> None:
        self.world.close()


# --------------------------------------------------------------------------------------
# side B: hand-written LangGraph graphs
# --------------------------------------------------------------------------------------
class RawState(TypedDict, total=False):
    b1: str
    b2: str
    b3: str
    b4: str
    b5: str
    b6: str


class Invoker:
    """One pass of a raw graph: ``invoker()``; ``invoker.conn`` is its checkpointer connection."""

    def __init__(self, graph: Any, conn: sqlite3.Connection, inputs: dict[str, Any], durability: str):
        self.graph, self.conn, self.inputs, self.durability = graph, conn, inputs, durability
        self.cfg = {"configurable": {"thread_id": "main"}}

    def __call__(self) -> None:
        self.graph.invoke(dict(self.inputs), self.cfg, durability=self.durability)


def raw_chain(path: Path, settings: ConnSettings, durability: str = "sync") -> Invoker:
    """Six no-op nodes in a linear chain, each writing one small string channel."""
    builder = StateGraph(RawState)
    previous = START
    for i, name in enumerate(CYCLE, start=1):
        builder.add_node(name, (lambda key: lambda state: {key: "x"})(f"b{i}"))
        builder.add_edge(previous, name)
        previous = name
    builder.add_edge(previous, END)
    conn = connect(path, settings)
    return Invoker(builder.compile(checkpointer=CompactSqliteSaver(conn)), conn, {}, durability)


def _append(old: list | None, new: list | None) -> list:
    return [*(old or []), *(new or [])]


class ShapedState(TypedDict, total=False):
    num_steps: int | None
    action: str | None
    passes: int
    block1: Any
    block2: Any
    block3: Any
    block4: Any
    block5: Any
    episode: int
    cursor: list[int]
    trace: Annotated[list[dict[str, Any]], _append]


# what each World node writes in a steady-state pass (blocks as the World stores them)
_SHAPED_WRITES: dict[str, dict[str, Any]] = {
    "philosopher": {"block4": {"items": [{"slot": "", "sha256": "", "text": "d"}]}},
    "author": {"block5": {"text": "o"}},
    "world_update": {"episode": 1},
    "development": {"block1": {"text": "i"}, "block2": None, "block3": None, "block4": None,
                    "block5": None, "action": None},
    "architect": {"block2": {"slots": [{"name": "scene", "kind": "image", "prompt": "p", "params": {}}]}},
    "creator": {"block3": {"items": [{"kind": "text", "uri": "artifacts/x.txt", "sha256": "", "mime": "",
                                      "slot": "", "meta": {}, "inline": None}]}},
}


def raw_world_shaped(path: Path, settings: ConnSettings, durability: str = "sync") -> Invoker:
    """A raw graph with the World's topology and channel writes, but no worldgen code.

    intake + six nodes, every node with conditional edges to every target and a retry
    policy; each node writes its block(s), ``cursor`` and a ``trace`` event (reducer
    channel), Development clears blocks 2-5 and the action — as the World does.
    """
    seq = ["intake", *CYCLE]
    builder = StateGraph(ShapedState)

    def make(name: str, index: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def node(state: dict[str, Any]) -> dict[str, Any]:
            if name == "intake":
                return {"num_steps": None, "passes": 1, "cursor": [1, -1],
                        "trace": Overwrite([])}
            event = {"pass": 1, "transition": name, "status": "ran", "reason": "inputs filled"}
            return {**_SHAPED_WRITES[name], "cursor": [1, index], "trace": [event]}

        return node

    builder.add_edge(START, "intake")
    for i, name in enumerate(seq):
        builder.add_node(name, make(name, i - 1), retry_policy=RetryPolicy(max_attempts=3))
        nxt = seq[i + 1] if i + 1 < len(seq) else END
        builder.add_conditional_edges(name, (lambda target: lambda state: target)(nxt), [*seq, END])
    conn = connect(path, settings)
    return Invoker(builder.compile(checkpointer=CompactSqliteSaver(conn)), conn, {"num_steps": 1, "action": None}, durability)


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------
def interleaved(
    fns: dict[str, Callable[[], None]], rounds: int, warmup: int, budget: float = 12.0
) -> dict[str, list[float]]:
    """Run each function once per round, alternating the order; seconds per call.

    Stops early (after at least 20 rounds) once ``budget`` seconds are spent, so a slow
    disk cannot make the script run for minutes.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    gc.collect()
    deadline = time.perf_counter() + budget
    for r in range(rounds):
        if r >= 20 and time.perf_counter() > deadline:
            break
        for name in order if r % 2 == 0 else reversed(order):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def sql_per_pass(conn: sqlite3.Connection, fn: Callable[[], None]) -> collections.Counter[str]:
    """The SQL statements one pass sends to the checkpointer connection."""
    seen: collections.Counter[str] = collections.Counter()

    def trace(statement: str) -> None:
        words = statement.split()
        verb = words[0].upper() if words else "?"
        table = next((w for w in words if w in ("checkpoints", "writes")), "")
        seen[f"{verb} {table}".strip()] += 1

    conn.set_trace_callback(trace)
    try:
        fn()
    finally:
        conn.set_trace_callback(None)
    return seen


def summarise_sql(counter: collections.Counter[str]) -> str:
    writes = counter["INSERT writes"]
    checkpoints = counter["INSERT checkpoints"]
    selects = sum(v for k, v in counter.items() if k.startswith("SELECT"))
    return f"{checkpoints} checkpoint INSERTs, {writes} write-row INSERTs, {selects} SELECTs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="interleaved passes per side (headline)")
    parser.add_argument("--variant-rounds", type=int, default=80, help="interleaved passes per side (variants)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-variants", action="store_true", help="only the headline comparison")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile World.invoke and list where worldgen's time goes")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="worldgen-bench-") as tmp:
        tmp_path = Path(tmp)
        world = WorldSide(tmp_path / "world")
        settings = settings_of(world.conn)
        raw = raw_chain(tmp_path / "raw.sqlite", settings)

        # two passes: the first runs development/architect/creator, from the second on all six
        world.invoke()
        result = world.world.invoke()
        ran = result.ran()
        if ran != list(CYCLE):
            print(f"unexpected: a steady-state pass ran {ran}", file=sys.stderr)
            return 1

        print("cycle overhead: one pass = World.invoke() with six trivial transitions, vs a raw")
        print("LangGraph chain of six no-op nodes; SqliteSaver, durability='sync', one thread")
        print(f"checkpointer connection (both sides): {describe(settings)}")
        raw()
        print("checkpointer SQL per pass (each INSERT is its own transaction when isolation_level=None):")
        print(f"  world: {summarise_sql(sql_per_pass(world.conn, world.invoke))}")
        print(f"  raw  : {summarise_sql(sql_per_pass(raw.conn, raw))}")

        times = interleaved({"world": world.invoke, "raw": raw}, args.rounds, args.warmup, budget=40.0)
        a, b = ms(times["world"]), ms(times["raw"])
        n = len(times["world"])
        print()
        print(f"  worldgen World.invoke : {a:7.2f} ms/pass  (median of {n}, mean "
              f"{statistics.mean(times['world']) * 1000:.2f})")
        print(f"  raw LangGraph chain   : {b:7.2f} ms/pass  (median of {n}, mean "
              f"{statistics.mean(times['raw']) * 1000:.2f})")
        ratio = a / b
        verdict = "OK" if ratio <= TARGET else "ABOVE TARGET"
        print(f"  ratio worldgen/raw    : {ratio:7.2f}   (target <= {TARGET}: {verdict})")
        world.close()

        if not args.no_variants:
            print()
            print("variants (each measured interleaved; ratio = world / raw chain on the same settings):")
            _variants(tmp_path, settings, args)

        if args.profile:
            _profile(tmp_path / "profiled", args.rounds)

    print(f"\n(total {time.perf_counter() - started:.1f} s)")
    return 0


def _variants(tmp_path: Path, settings: ConnSettings, args: argparse.Namespace) -> None:
    rounds, warmup = args.variant_rounds, args.warmup

    def row(label: str, times: dict[str, list[float]], base: str = "raw chain") -> None:
        b = ms(times[base])
        parts = [f"{name} {ms(t):6.2f} ms (x{ms(t) / b:.2f})" for name, t in times.items() if name != base]
        print(f"  {label}\n      {base} {b:6.2f} ms | " + " | ".join(parts))

    # 1. where the gap comes from, on the World's own settings
    folder = tmp_path / "v1"
    folder.mkdir()
    world = WorldSide(folder / "world")
    fns = {
        "raw chain": raw_chain(folder / "raw.sqlite", settings),
        "raw world-shaped": raw_world_shaped(folder / "shaped.sqlite", settings),
        "world.graph.invoke": world.graph_invoke(),
        "World.invoke": world.invoke,
    }
    world.invoke()
    row("World's settings; raw world-shaped = intake + conditional edges + the World's channel writes:",
        interleaved(fns, rounds, warmup))
    world.close()

    # 2. other connection settings, the same on both sides
    others: list[tuple[str, ConnSettings]] = []
    if settings["isolation_level"] is None:
        others.append(("deferred transactions (sqlite3 default, as SqliteSaver.from_conn_string): "
                       "one commit per put_writes instead of one per row",
                       {**settings, "isolation_level": ""}))
    if int(settings["synchronous"]) > 1:
        others.append(("synchronous=NORMAL (WAL: no fsync per commit; safe against a process crash)",
                       {**settings, "synchronous": 1}))
    for i, (label, other) in enumerate(others, start=2):
        folder = tmp_path / f"v{i}"
        folder.mkdir()
        world = WorldSide(folder / "world", other)
        world.invoke()
        times = interleaved({"raw chain": raw_chain(folder / "raw.sqlite", other), "World.invoke": world.invoke},
                            rounds, warmup)
        row(label, times)
        world.close()

    # 3. what other settings would buy the World itself (absolute ms/pass, World vs World)
    if others:
        worlds = {"World (as is)": WorldSide(tmp_path / "w-as-is")}
        tuned = dict(settings)
        for i, (label, other) in enumerate(others):
            tuned.update({k: v for k, v in other.items() if v != settings[k]})  # type: ignore[literal-required]
            worlds[f"World ({'+'.join(n for n, v in tuned.items() if v != settings[n])} changed)"] = WorldSide(
                tmp_path / f"w-tuned-{i}", ConnSettings(**tuned))  # type: ignore[typeddict-item]
        for w in worlds.values():
            w.invoke()
        times = interleaved({name: w.invoke for name, w in worlds.items()}, rounds, warmup)
        row("the World alone on tuned checkpointer connections (x = vs the World as is):", times,
            base="World (as is)")
        for w in worlds.values():
            w.close()

    # 4. durability parity: 'exit' writes one checkpoint per invoke on both sides
    folder = tmp_path / "v9"
    folder.mkdir()
    world = WorldSide(folder / "world")
    world.invoke()
    times = interleaved({"raw chain": raw_chain(folder / "raw.sqlite", settings, durability="exit"),
                         "world.graph.invoke": world.graph_invoke(durability="exit")}, rounds, warmup)
    row("durability='exit' on both sides (World.invoke always uses 'sync'; graph called directly):", times)
    world.close()


def _profile(folder: Path, passes: int) -> None:
    """Where a World pass spends its time in the calling thread (checkpoint writes run on
    LangGraph's background thread and show up as waits on a lock)."""
    import cProfile
    import pstats

    world = WorldSide(folder)
    for _ in range(5):
        world.invoke()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(passes):
        world.invoke()
    profiler.disable()
    world.close()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in stats.values())
    print(f"\nprofile of {passes} World.invoke passes (main thread, {total / passes * 1000:.2f} ms/pass "
          "of self time); worldgen functions by cumulative time per pass:")
    rows = [(ct, nc, f"{Path(file).name}:{line}({name})") for (file, line, name), (_, nc, _, ct, _) in stats.items()
            if "/worldgen/" in file]
    for ct, nc, where in sorted(rows, reverse=True)[:15]:
        print(f"  {ct / passes * 1000:7.3f} ms  {nc / passes:5.1f} calls  {where}")
    print("top self time (all code) per pass:")
    rows = [(tt, f"{Path(file).name}:{line}({name})") for (file, line, name), (_, _, tt, _, _) in stats.items()]
    for tt, where in sorted(rows, reverse=True)[:10]:
        print(f"  {tt / passes * 1000:7.3f} ms  {where}")


if __name__ == "__main__":
    sys.exit(main())
