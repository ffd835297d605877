"""The ``worldgen`` command: run a world, look at it, check its config.

Only typer and rich are imported at module level; the world (LangGraph) and its models
(torch, transformers) load inside the commands, so ``worldgen --help`` stays quick and
``show``/``validate`` never load a model.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from worldgen.world import TraceEvent, World

__all__ = ["app"]

app = typer.Typer(
    name="worldgen",
    help="Build worlds out of language models: run passes of the canonical cycle, read the chronicle.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold API clients; never print them
)

DEFAULT_ROOT = Path("worlds/world")
_BLOCK_TITLES = {1: "Intent", 2: "Generation config", 3: "Artifacts", 4: "Descriptions", 5: "Outcome"}

RootOption = Annotated[Path, typer.Option("--root", "-r", help="The world's folder (holds world.yaml).")]


def _out() -> Console:
    # built per call: rich reads the terminal size and COLUMNS when a Console is made
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


# --------------------------------------------------------------------------------------
# opening worlds (tests monkeypatch _open_world to inject scripted stages)
# --------------------------------------------------------------------------------------
def _open_world(
    root: Path, llm: str | None, text_to_image: str | None, review: bool | None = None, agents: bool | None = None
) -> World:
    """Reopen the world at ``root`` (overrides only when given), or create a canon world there."""
    from worldgen.world import World

    if (root / "world.yaml").exists():
        return World.open(root, llm=llm, text_to_image=text_to_image, review=review, agents=agents)
    return World.from_template(
        "canon", root=root, llm=llm or "local", text_to_image=text_to_image or "procedural", review=bool(review),
        agents=bool(agents),
    )


def _open_for_reading(root: Path) -> World:
    """Open a world without building its models: reading needs no LLM or renderer."""
    from worldgen.stage import CYCLE
    from worldgen.world import World

    if not (root / "world.yaml").exists():
        raise FileNotFoundError(f"{root}: no world here (no world.yaml); create one with `worldgen run --root {root}`")
    return World.open(root, stages={t: _never_runs for t in CYCLE})


def _never_runs(state: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("a world opened for reading does not run")


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Turn the errors a user can cause or fix into one red line and exit code 1."""
    from worldgen.stage import TransitionError

    err = _err()
    try:
        yield
    except TransitionError as exc:
        message = str(exc).removeprefix(f"{exc.transition}: ")
        err.print(f"[bold red]✗ transition {escape(exc.transition)} failed:[/] {escape(message)}")
        err.print("[dim]The world stays at its last checkpoint; `worldgen run` again resumes it.[/]")
        raise typer.Exit(1) from None
    except FileNotFoundError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except ImportError as exc:
        err.print(f"[bold red]error:[/] missing dependency: {escape(str(exc))}")
        raise typer.Exit(1) from None
    except ValueError as exc:  # includes StateError and pydantic's ValidationError
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None


# --------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------
@app.command()
def run(
    root: RootOption = DEFAULT_ROOT,
    steps: Annotated[int, typer.Option("--steps", "-n", min=1, help="Passes of the cycle to run.")] = 1,
    action: Annotated[str | None, typer.Option("--action", "-a", help="An action for Development (first pass).")] = None,
    llm: Annotated[
        str | None, typer.Option("--llm", help='Chat model: "local" or "openai:<model>" (default: the world\'s).')
    ] = None,
    text_to_image: Annotated[
        str | None,
        typer.Option("--text-to-image", help='"procedural" or "diffusers:<folder>" (default: the world\'s).'),
    ] = None,
    review: Annotated[
        bool | None,
        typer.Option("--review/--no-review", help="Pause before each World update for you to approve, edit or reject."),
    ] = None,
    agents: Annotated[
        bool | None,
        typer.Option("--agents/--no-agents", help="Development, Author and Creator as tool-calling agents."),
    ] = None,
) -> None:
    """Run passes of the world at ROOT (created if new), then write its chronicle.html."""
    out = _out()
    with _clean_errors():
        world = _open_world(root, llm, text_to_image, review, agents)
        try:
            started = time.perf_counter()
            try:
                trace = _stream(world, steps, action, out)
                trace += _answer_reviews(world, out)
            except KeyboardInterrupt:
                _err().print("[yellow]interrupted[/]: the world stays at its last checkpoint; "
                             "`worldgen run` again resumes it.")
                raise typer.Exit(130) from None
            elapsed = time.perf_counter() - started
            from worldgen.chronicle import write_chronicle

            page = write_chronicle(world, trace=trace)
            out.print(f"chronicle: [bold]{escape(str(page))}[/]")
            out.print(_summary(world, trace, elapsed))
        finally:
            world.close()


def _stream(world: World, steps: int, action: str | None, out: Console) -> list[TraceEvent]:
    """Run the world, one line per finished transition and a bar over the passes."""
    pending = _pending_run(world, action)
    resuming = pending is not None
    total = pending if pending is not None else steps
    if resuming:
        out.print(f"[yellow]resuming an interrupted run ({total} pass{'es' if total != 1 else ''}) "
                  "from its last checkpoint; --steps applies to the next run[/]")
    out.print(f"world [bold]{escape(world.world_id)}[/] at {escape(str(world.root))}")
    events = world.stream(None, action, num_steps=steps) if not resuming else world.stream()
    return _show(events, total, "resuming…" if resuming else "philosopher", out)


def _show(events: Iterator[TraceEvent], total: int, first: str, out: Console) -> list[TraceEvent]:
    """One line per finished transition and a bar over the passes."""
    trace: list[TraceEvent] = []
    done: set[int] = set()
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("passes"),
        TimeElapsedColumn(),
        console=out,
        transient=False,
    )
    with progress:
        task = progress.add_task(_running(first, 1, total), total=total)
        last = time.perf_counter()
        for event in events:
            now = time.perf_counter()
            # skips arrive with (right after) the transition that ran before them: no time of their own
            took = now - last if event.status == "ran" else None
            last = now
            trace.append(event)
            progress.console.print(_event_line(event, took))
            done.update(range(1, event.pass_index))  # a later pass started: earlier ones are over
            if event.transition == "creator":
                done.add(event.pass_index)
            nxt_transition, nxt_pass = _next_after(event)
            progress.update(
                task, completed=min(len(done), total), description=_running(nxt_transition, nxt_pass, total)
            )
        progress.update(task, completed=total, description="[green]done[/]")
    return trace


def _answer_reviews(world: World, out: Console) -> list[TraceEvent]:
    """Ask about each paused World update (when someone is at the terminal) and go on."""
    trace: list[TraceEvent] = []
    while (candidate := world.pending_review()) is not None:
        out.print(_review_panel(candidate))
        if not sys.stdin.isatty():
            out.print("[yellow]waiting for review[/]: answer with `worldgen review --approve`, "
                      "`--reject` or `--outcome TEXT`")
            break
        choice = typer.prompt("approve, reject or edit the outcome? [a/r/e]", default="a").strip().lower()
        decision: Any = "reject" if choice.startswith("r") else "approve"
        if choice.startswith("e"):
            decision = {"block5": typer.prompt("the outcome (block 5)")}
        trace += _show(world.stream_review(decision), 1, "world_update", out)
    return trace


def _review_panel(candidate: dict[str, Any]) -> Panel:
    state = candidate.get("state") or {}
    lines = [f"[bold]block {key[5:]}[/] {escape(_as_text(value))}" for key, value in state.items()]
    return Panel("\n".join(lines), title=f"World update of pass {candidate.get('pass')} waits for review")


@app.command("review")
def review_command(
    root: RootOption = DEFAULT_ROOT,
    approve: Annotated[bool, typer.Option("--approve", help="Apply the state as it is.")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Drop the state; the world develops on.")] = False,
    outcome: Annotated[str | None, typer.Option("--outcome", help="Replace block 5, then apply.")] = None,
) -> None:
    """Answer a World update paused for review, then finish the run."""
    out = _out()
    if approve + reject + (outcome is not None) != 1:
        _err().print("[red]error[/]: give exactly one of --approve, --reject, --outcome TEXT")
        raise typer.Exit(1)
    decision: Any = "approve" if approve else "reject" if reject else {"block5": outcome}
    with _clean_errors():
        world = _open_for_reading(root)
        try:
            if world.pending_review() is None:
                raise ValueError(f"{root}: no World update is waiting for review")
            world.close()
            world = _open_world(root, None, None)
            trace = _show(world.stream_review(decision), 1, "world_update", out)
            trace += _answer_reviews(world, out)
            from worldgen.chronicle import write_chronicle

            out.print(f"chronicle: [bold]{escape(str(write_chronicle(world, trace=trace)))}[/]")
        finally:
            world.close()


def _pending_run(world: World, action: str | None) -> int | None:
    """The passes of an interrupted run, which World.stream finishes instead of starting anew."""
    if action is not None:
        return None  # an action starts a new run (the interrupted one is dropped)
    return world.interrupted_passes()


def _next_after(event: TraceEvent) -> tuple[str, int]:
    # every transition reports ran or skipped, in cycle order: the next one is the one after
    from worldgen.stage import CYCLE

    i = CYCLE.index(event.transition) + 1
    return (CYCLE[i], event.pass_index) if i < len(CYCLE) else (CYCLE[0], event.pass_index + 1)


def _running(transition: str, pass_index: int, total: int) -> str:
    if pass_index > total:
        return "finishing"
    return f"pass {pass_index}/{total} · {transition}"


def _event_line(event: TraceEvent, took: float | None) -> str:
    mark = "[green]✓[/]" if event.status == "ran" else "[dim]·[/]"
    status = "ran" if event.status == "ran" else "[dim]skipped[/]"
    secs = f"{took:6.2f}s" if took is not None else "       "
    reason = escape(event.reason)
    snap = f" → {escape(event.snapshot)}" if event.snapshot else ""
    name = f"{event.transition:<12}"
    if event.status == "skipped":
        name, reason = f"[dim]{name}[/]", f"[dim]{reason}[/]"
    return f" {mark} pass {event.pass_index}  {name} {status:<7} {secs}  {reason}{snap}"


def _summary(world: World, trace: list[TraceEvent], elapsed: float) -> Table:
    table = Table(title="run summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    passes = len({e.pass_index for e in trace})
    ran = sum(e.status == "ran" for e in trace)
    skipped = sum(e.status == "skipped" for e in trace)
    snapshots = [e.snapshot for e in trace if e.snapshot]
    table.add_row("passes", str(passes))
    table.add_row("transitions ran", str(ran))
    table.add_row("transitions skipped", str(skipped))
    table.add_row("snapshots written", str(len(snapshots)))
    table.add_row("episodes in chronicle", str(len(world.content.chronicle)))
    table.add_row("seconds", f"{elapsed:.1f}")
    return table


# --------------------------------------------------------------------------------------
# show
# --------------------------------------------------------------------------------------
@app.command()
def show(root: RootOption = DEFAULT_ROOT) -> None:
    """Print the world's chronicle and its current state."""
    out = _out()
    with _clean_errors():
        world = _open_for_reading(root)
        try:
            content = world.content
            out.print(f"world [bold]{escape(world.world_id)}[/] at {escape(str(world.root))}")
            if content.story:
                out.print(Panel(escape(content.story), title="premise", title_align="left"))
            out.print(_chronicle_table(content.chronicle))
            state = world.state
            filled = sorted(state.filled())
            if not filled:
                out.print("[dim]current state: all five blocks are empty[/]")
            for n in filled:
                text = state.get(n).as_text()  # type: ignore[union-attr]
                out.print(Panel(escape(text), title=f"block {n} · {_BLOCK_TITLES[n]}", title_align="left"))
        finally:
            world.close()


def _chronicle_table(episodes: list[dict[str, Any]]) -> Table:
    table = Table(title=f"chronicle · {len(episodes)} episode{'s' if len(episodes) != 1 else ''}",
                  title_justify="left", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("intent", ratio=2)
    table.add_column("outcome", ratio=3)
    table.add_column("artifacts", ratio=2, overflow="fold")
    for i, ep in enumerate(episodes, 1):
        refs = [r for r in ep.get("artifacts") or [] if isinstance(r, dict)]
        arts = "\n".join(f"{r.get('slot') or r.get('kind', '')}: {r.get('uri') or '(inline)'}" for r in refs)
        table.add_row(
            escape(str(ep.get("episode", i))),
            escape(_as_text(ep.get("intent"))),
            escape(_as_text(ep.get("outcome"))),
            escape(arts),
        )
    return table


def _as_text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("text", ""))
    return "" if value is None else str(value)


# --------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------
@app.command()
def validate(file: Annotated[Path, typer.Argument(help="A world or graph config (YAML or JSON).")]) -> None:
    """Check a world config (world.yaml) or a graph config against its schema; exit 1 naming
    the bad key if it is not valid."""
    with _clean_errors():
        try:
            kind = _config_kind(file)
            if kind == "graph":
                from worldgen.engine.serialization import read_graph_config

                graph = read_graph_config(file)
                summary = f"graph [bold]{escape(graph.graph_id or '?')}[/] ({len(graph.nodes)} nodes, schema {graph.schema_version})"
            else:
                from worldgen.world import WorldConfig

                world = WorldConfig.load(file)
                summary = (f"world [bold]{escape(world.world_id)}[/] "
                           f"(template {escape(world.template)}, schema {world.schema_version})")
        except OSError as exc:  # a directory, unreadable, …: as clean as a missing file
            raise FileNotFoundError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    _out().print(f"[green]valid[/]: {summary}")


@app.command()
def schema(
    kind: Annotated[str, typer.Argument(help="Which config: world or graph.")] = "world",
) -> None:
    """Print the JSON Schema of a config kind (for editors and CI checks)."""
    import json

    if kind == "world":
        from worldgen.world import WorldConfig

        document = WorldConfig.model_json_schema()
    elif kind == "graph":
        from worldgen.engine.serialization import graph_config_json_schema

        document = graph_config_json_schema()
    else:
        _err().print(f"[red]error[/]: unknown config kind {kind!r}: world or graph")
        raise typer.Exit(1)
    typer.echo(json.dumps(document, indent=2))


def _config_kind(file: Path) -> str:
    """A graph config has nodes; anything else is read as a world config."""
    import yaml

    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))  # JSON is YAML
    except yaml.YAMLError as exc:
        raise ValueError(f"{file}: not valid YAML: {exc}") from exc
    return "graph" if isinstance(data, dict) and "nodes" in data else "world"


if __name__ == "__main__":  # pragma: no cover
    app()
