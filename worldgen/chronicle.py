"""The chronicle page: a world's history as one self-contained HTML file.

It sits in the world's root next to ``artifacts/``, so images are linked by relative
``src`` (the page stays small and opens from disk, from a zip or behind any static server)
and text artifacts are inlined. No scripts, no external resources: a reader needs nothing
but a browser. Every piece of text comes from models or users, so all of it is escaped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from worldgen.files import atomic_write
from worldgen.state import BLOCK_NUMBERS, ArtifactRef

if TYPE_CHECKING:
    from worldgen.world import TraceEvent, World

__all__ = ["write_chronicle", "render_chronicle", "CHRONICLE_NAME"]

CHRONICLE_NAME = "chronicle.html"
#: text artifacts longer than this are cut in the page (the file stays in artifacts/)
_MAX_INLINE_CHARS = 20_000
_BLOCK_TITLES = {
    1: "Intent",
    2: "Generation config",
    3: "Artifacts",
    4: "Descriptions",
    5: "Outcome",
}

_CSS = """
:root { color-scheme: light dark; --fg:#1d1d1f; --muted:#6b6b70; --bg:#fbfaf7; --card:#fff;
  --line:#e3e0d8; --accent:#8a4b1f; --skip:#9a9aa0; }
@media (prefers-color-scheme: dark) { :root { --fg:#ecebe8; --muted:#a3a19c; --bg:#18181a;
  --card:#222225; --line:#38383c; --accent:#e0a36e; --skip:#76767c; } }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font: 16px/1.55 Georgia, "Iowan Old Style", "Palatino Linotype", serif; }
main { max-width: 920px; margin: 0 auto; padding: 2.5rem 1.25rem 4rem; }
h1 { font-size: 2.1rem; margin: 0 0 .25rem; letter-spacing: .01em; }
h2 { font-size: 1.35rem; margin: 2.5rem 0 .75rem; padding-bottom: .3rem; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.1rem 0 .4rem; color: var(--accent);
  font-family: system-ui, sans-serif; text-transform: uppercase; letter-spacing: .06em; font-size: .8rem; }
p { margin: .35rem 0; }
.muted, .meta { color: var(--muted); }
.meta { font: 13px/1.4 system-ui, sans-serif; }
.lede { font-size: 1.1rem; }
section.episode, section.state { background: var(--card); border: 1px solid var(--line);
  border-radius: 10px; padding: 1rem 1.4rem 1.2rem; margin: 1.2rem 0; }
section.episode > h2, section.state > h2 { border: 0; margin: .2rem 0 .3rem; }
.outcome { font-size: 1.08rem; border-left: 3px solid var(--accent); padding-left: .9rem; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: .9rem; }
figure { margin: 0; }
figure img { display:block; width:100%; height:auto; border-radius:6px; border:1px solid var(--line);
  image-rendering: auto; background: var(--line); }
figcaption { font: 13px/1.4 system-ui, sans-serif; color: var(--muted); margin-top: .3rem; }
pre.text { white-space: pre-wrap; font: 15px/1.5 Georgia, serif; background: var(--bg);
  border: 1px solid var(--line); border-radius: 6px; padding: .6rem .8rem; margin: 0; }
ul { margin: .3rem 0; padding-left: 1.3rem; }
code, .slot { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
.tags span { display:inline-block; font: 13px/1.6 system-ui, sans-serif; border:1px solid var(--line);
  border-radius: 999px; padding: 0 .6rem; margin: 0 .3rem .3rem 0; }
table { border-collapse: collapse; width: 100%; font: 14px/1.4 system-ui, sans-serif; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
tr.skipped td { color: var(--skip); }
.status-ran { color: #2e7d32; font-weight: 600; }
dl { margin: .3rem 0; } dt { font-weight: bold; } dd { margin: 0 0 .4rem 1.2rem; }
footer { margin-top: 3rem; }
"""


def write_chronicle(
    world: World,
    path: str | os.PathLike[str] | None = None,
    *,
    trace: Sequence[TraceEvent] | None = None,
) -> Path:
    """Write the world's chronicle page (default ``<root>/chronicle.html``) and return its path."""
    target = Path(path) if path is not None else Path(world.root) / CHRONICLE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    html_text = render_chronicle(world, trace=trace, page_dir=target.parent)
    return atomic_write(target, html_text)  # a reader never sees half a page


def render_chronicle(
    world: World,
    *,
    trace: Sequence[TraceEvent] | None = None,
    page_dir: str | os.PathLike[str] | None = None,
) -> str:
    """The chronicle page as a string; image links are relative to ``page_dir`` (default: root)."""
    page = _Page(world, Path(page_dir) if page_dir is not None else Path(world.root))
    return page.render(trace)


class _Page:
    """One rendering: knows where the page sits so artifact links resolve from it."""

    def __init__(self, world: World, page_dir: Path):
        self.world = world
        self.root = Path(world.root)
        self.page_dir = page_dir

    # -- page ----------------------------------------------------------------------------
    def render(self, trace: Sequence[TraceEvent] | None) -> str:
        content = self.world.content
        title = f"{self.world.world_id} — chronicle"
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
            self._header(content),
        ]
        episodes = content.chronicle
        parts.append(f'<h2 id="chronicle">Chronicle <span class="muted">· {len(episodes)} '
                     f'episode{"" if len(episodes) == 1 else "s"}</span></h2>')
        if not episodes:
            parts.append('<p class="muted">Nothing has happened yet: no state has been full '
                         "enough to be applied to the world.</p>")
        parts.extend(self._episode(ep, i) for i, ep in enumerate(episodes, 1))
        parts.append(self._current_state())
        if trace:
            parts.append(self._trace(trace))
        if content.entities:
            parts.append(self._entities(content.entities))
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        parts.append(f'<footer class="meta">Written by worldgen at {_e(stamp)}.</footer>')
        parts.append("</main></body></html>\n")
        return "\n".join(parts)

    def _header(self, content: Any) -> str:
        cfg = getattr(self.world, "config", None)
        out = [f"<header><h1>{_e(self.world.world_id)}</h1>"]
        if cfg is not None and cfg.description:
            out.append(f'<p class="lede">{_e(cfg.description)}</p>')
        if cfg is not None:
            models = ", ".join(f"{k}: {v}" for k, v in (("llm", cfg.llm), ("images", cfg.text_to_image)) if v)
            out.append(f'<p class="meta">template {_e(cfg.template)}{" · " + _e(models) if models else ""}</p>')
        if content.story:
            out.append(f"<h3>Premise</h3>{_paragraphs(content.story)}")
        if content.style:
            out.append(f"<h3>Style</h3>{_paragraphs(content.style)}")
        if content.rules:
            out.append("<h3>Rules</h3><ul>" + "".join(f"<li>{_e(r)}</li>" for r in content.rules) + "</ul>")
        if content.glossary:
            items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in sorted(content.glossary.items()))
            out.append(f"<h3>Glossary</h3><dl>{items}</dl>")
        out.append("</header>")
        return "\n".join(out)

    # -- episodes ------------------------------------------------------------------------
    def _episode(self, ep: Mapping[str, Any], position: int) -> str:
        number = ep.get("episode", position)
        key = ep.get("key", "")
        out = [f'<section class="episode" id="episode-{_e(key or number)}">',
               f"<h2>Episode {_e(number)}</h2>"]
        if key:
            out.append(f'<p class="meta">key <code>{_e(key)}</code></p>')
        out.append(self._intent(ep.get("intent")))
        out.append(self._config(ep.get("config")))
        out.append(self._artifacts(ep.get("artifacts")))
        out.append(self._descriptions(ep.get("descriptions")))
        out.append(f'<h3>5 · Outcome</h3><div class="outcome">{_paragraphs(_text(ep.get("outcome")))}</div>')
        entities = ep.get("entities") or []
        if entities:
            out.append('<h3>Entities</h3><p class="tags">'
                       + "".join(f"<span>{_e(n)}</span>" for n in entities) + "</p>")
        out.append("</section>")
        return "\n".join(x for x in out if x)

    def _intent(self, value: Any) -> str:
        return f"<h3>1 · Intent</h3>{_paragraphs(_text(value))}"

    def _config(self, value: Any) -> str:
        slots = value.get("slots", []) if isinstance(value, Mapping) else []
        if not slots:
            text = _text(value)
            return f"<h3>2 · Generation config</h3>{_paragraphs(text)}" if text else ""
        rows = []
        for slot in slots:
            if not isinstance(slot, Mapping):
                continue
            params = slot.get("params") or {}
            extra = ", ".join(f"{k}={v}" for k, v in params.items())
            rows.append(
                f'<li><span class="slot">{_e(slot.get("name", ""))} ({_e(slot.get("kind", ""))})</span> '
                f'{_e(slot.get("prompt", ""))}'
                + (f' <span class="meta">[{_e(extra)}]</span>' if extra else "")
                + "</li>"
            )
        return "<h3>2 · Generation config</h3><ul>" + "".join(rows) + "</ul>"

    def _artifacts(self, items: Any) -> str:
        refs = [r for r in (items or []) if isinstance(r, Mapping)]
        if not refs:
            return ""
        images = [self._figure(r) for r in refs if r.get("kind") == "image"]
        others = [self._other(r) for r in refs if r.get("kind") != "image"]
        out = ["<h3>3 · Artifacts</h3>"]
        if images:
            out.append('<div class="gallery">' + "".join(images) + "</div>")
        out.extend(others)
        return "\n".join(out)

    def _figure(self, ref: Mapping[str, Any]) -> str:
        src = self._src(ref)
        caption = _caption(ref)
        if src is None:
            return f'<figure><p class="muted">missing image {_e(ref.get("uri", ""))}</p>' \
                   f"<figcaption>{caption}</figcaption></figure>"
        alt = (ref.get("meta") or {}).get("prompt") or ref.get("slot") or "artifact"
        return (f'<figure><a href="{src}"><img src="{src}" alt="{_e(alt)}" loading="lazy"></a>'
                f"<figcaption>{caption}</figcaption></figure>")

    def _other(self, ref: Mapping[str, Any]) -> str:
        caption = _caption(ref)
        if ref.get("kind") == "text" or str(ref.get("mime", "")).startswith("text/"):
            text = self._read_text(ref)
            if text is not None:
                if len(text) > _MAX_INLINE_CHARS:
                    text = text[:_MAX_INLINE_CHARS] + "\n…"
                return f'<figure><pre class="text">{_e(text)}</pre><figcaption>{caption}</figcaption></figure>'
        src = self._src(ref)
        link = f'<a href="{src}">{_e(ref.get("uri", ""))}</a>' if src else _e(ref.get("uri", "(missing)"))
        return f"<p>{link} <span class=\"meta\">{caption}</span></p>"

    def _descriptions(self, items: Any) -> str:
        if isinstance(items, Mapping):
            items = items.get("items")
        rows = []
        for d in items or []:
            if isinstance(d, Mapping):
                label = d.get("slot") or "artifact"
                rows.append(f'<li><span class="slot">{_e(label)}</span> {_e(d.get("text", ""))}</li>')
            elif isinstance(d, str):
                rows.append(f"<li>{_e(d)}</li>")
        return "<h3>4 · Descriptions</h3><ul>" + "".join(rows) + "</ul>" if rows else ""

    # -- current state and trace -------------------------------------------------------------
    def _current_state(self) -> str:
        state = self.world.state
        filled = sorted(state.filled())
        out = ['<section class="state" id="state"><h2>Current state</h2>']
        if not filled:
            out.append('<p class="muted">All five blocks are empty.</p>')
        else:
            names = ", ".join(f"{n} ({_BLOCK_TITLES[n].lower()})" for n in filled)
            out.append(f'<p class="meta">blocks filled: {_e(names)}; the next pass continues from here.</p>')
        for n in BLOCK_NUMBERS:
            if n not in filled:
                continue
            doc = state.get(n).model_dump(mode="json")  # type: ignore[union-attr]
            if n == 1:
                out.append(self._intent(doc))
            elif n == 2:
                out.append(self._config(doc))
            elif n == 3:
                out.append(self._artifacts(doc.get("items")))
            elif n == 4:
                out.append(self._descriptions(doc))
            else:
                out.append(f'<h3>5 · Outcome</h3><div class="outcome">{_paragraphs(_text(doc))}</div>')
        out.append("</section>")
        return "\n".join(out)

    def _trace(self, trace: Iterable[TraceEvent]) -> str:
        rows = []
        for ev in trace:
            snap = f"<code>{_e(ev.snapshot)}</code>" if ev.snapshot else ""
            status = f'<span class="status-{_e(ev.status)}">{_e(ev.status)}</span>'
            rows.append(f'<tr class="{_e(ev.status)}"><td>{_e(ev.pass_index)}</td><td>{_e(ev.transition)}</td>'
                        f"<td>{status}</td><td>{_e(ev.reason)}</td><td>{snap}</td></tr>")
        return ('<h2 id="trace">Last run</h2><table><thead><tr><th>pass</th><th>transition</th>'
                "<th>status</th><th>why</th><th>snapshot</th></tr></thead><tbody>"
                + "".join(rows) + "</tbody></table>")

    def _entities(self, entities: Mapping[str, Mapping[str, Any]]) -> str:
        rows = []
        for name, ent in sorted(entities.items(), key=lambda kv: kv[0].casefold()):
            episodes = ", ".join(str(k) for k in ent.get("episodes", []))
            mentions = ent.get("mentions") or {}
            last = next(reversed(mentions.values()), "") if mentions else ""
            rows.append(f"<tr><td>{_e(name)}</td><td><code>{_e(episodes)}</code></td><td>{_e(last)}</td></tr>")
        return ('<h2 id="entities">Entities</h2><table><thead><tr><th>name</th><th>episodes</th>'
                "<th>last mention</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")

    # -- artifact files ----------------------------------------------------------------------
    def _file(self, ref: Mapping[str, Any]) -> Path | None:
        """The artifact's file, if the ref is well formed, stays in the store and exists."""
        try:
            path = self.world.artifacts.path(ArtifactRef.model_validate(dict(ref)))
        except (ValueError, TypeError):
            return None
        return path if path.is_file() else None

    def _src(self, ref: Mapping[str, Any]) -> str | None:
        path = self._file(ref)
        if path is None:
            return None
        rel = Path(os.path.relpath(path, self.page_dir)).as_posix()
        return _e(quote(rel))

    def _read_text(self, ref: Mapping[str, Any]) -> str | None:
        if ref.get("inline") is not None and not ref.get("uri"):
            return str(ref["inline"])
        path = self._file(ref)
        if path is None:
            return None
        return path.read_text(encoding="utf-8", errors="replace")


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _text(value: Any) -> str:
    """A block's text whether it was stored as a string or as a block document."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return str(value.get("text", ""))
    return str(value)


def _paragraphs(text: str) -> str:
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    if not paras:
        return '<p class="muted">(empty)</p>'
    return "".join(f"<p>{_e(p).replace(chr(10), '<br>')}</p>" for p in paras)


def _caption(ref: Mapping[str, Any]) -> str:
    meta = ref.get("meta") or {}
    bits = [str(ref.get("slot") or ref.get("kind", "artifact"))]
    if "width" in meta and "height" in meta:
        bits.append(f"{meta['width']}×{meta['height']}")
    if meta.get("generator"):
        bits.append(str(meta["generator"]))
    if "seed" in meta:
        bits.append(f"seed {meta['seed']}")
    return _e(" · ".join(bits))
