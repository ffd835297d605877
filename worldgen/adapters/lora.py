"""LoRA on local torch blocks, through peft (levels.md §7 "LoRA on a shared block", "LoRA-world").

`apply_lora(obj, ...)` walks any level (a World, Stage, StageGraph, Pipeline, Graph or Block),
injects a peft LoRA adapter (`peft.inject_adapter_in_model`) into the torch module of every
eligible block, freezes every base weight, and returns a `LoraSet` whose `parameters()` are
what the optimizer gets: adapter weights only.

Sharing. The model pool hands one torch module to every block built from one checkpoint, so
the adapter lives on the module:

* (a) one adapter shared by every use: ``apply_lora(obj, name="style")`` — the block's
  *default* adapter, active wherever the block runs;
* (b) several adapters on one base, chosen by call context:
  ``apply_lora(g1, name="g1", when={"graph_id": "g1"})`` and the same for ``g2``. Before each
  forward of the module, the adapter whose ``when`` matches the current call context
  (`worldgen.engine.context`: graph_id and node_id are set by the engine; stage_id / role /
  pipeline_id by whoever runs them) is switched on; the most specific match wins, else the
  default adapter, else none (the bare base). Switching mutates the shared module, so two
  threads must not run one module under different adapters at the same time.

Saving. After injection the module's ``state_dict()`` still has the base model's own keys
(peft's ``base_layer`` renamed back, adapter tensors left out), so every existing save path
(`Graph.save`, `Pipeline.save`, diffusers) writes the base once, unchanged; `LoraSet.save`
writes one ``lora_<name>.safetensors`` and one ``lora_<name>.json`` per adapter name, and
`load_lora` puts them back on a freshly built base.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from worldgen.adapters.base import Adapter, AdapterError, unique_parameters
from worldgen.adapters.walk import BlockSite, OtherSite, walk
from worldgen.blocks.base import Block
from worldgen.engine.context import current_call_context

__all__ = ["LoraAdapter", "LoraSet", "apply_lora", "load_lora", "lora_adapters_of"]

#: LoraConfig fields kept in ``lora_<name>.json`` (enough to rebuild the same slots).
_CONFIG_FIELDS = ("r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "use_dora", "init_lora_weights")
_ATTR = "_worldgen_lora"


# ---------------------------------------------------------------- per-module state
@dataclass
class _ModuleLora:
    """What worldgen keeps on a peft-injected module: adapters, routing, layer index."""

    adapters: dict[str, LoraConfig] = field(default_factory=dict)
    default: str | None = None
    rules: list[tuple[dict[str, str], str]] = field(default_factory=list)
    tuner_paths: dict[str, BaseTunerLayer] = field(default_factory=dict)
    active: str | None | bool = False  # False: not set yet
    raw: int = 0  # >0 while reading the peft-named state dict

    def choose(self) -> str | None:
        """The adapter for the code running now: the most specific `when` rule matching
        the call context, else the default (the context is read only when there are rules)."""
        if not self.rules:
            return self.default
        ctx = current_call_context()
        best, score = self.default, -1
        for match, name in self.rules:
            if len(match) > score and all(ctx.get(k) == v for k, v in match.items()):
                best, score = name, len(match)
        return best

    def activate(self, name: str | None) -> None:
        if name == self.active:
            return
        for layer in self.tuner_paths.values():  # not layer.set_adapter: that would flip requires_grad
            layer._active_adapter = [name] if name is not None else []
        self.active = name

    def reindex(self, module: torch.nn.Module) -> None:
        self.tuner_paths = {n: m for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)}
        self.active = False


def _state(module: torch.nn.Module) -> _ModuleLora | None:
    return module.__dict__.get(_ATTR)


def _install(module: torch.nn.Module) -> _ModuleLora:
    state = _state(module)
    if state is not None:
        return state
    state = _ModuleLora()
    module.__dict__[_ATTR] = state  # plain attribute: not a submodule, not in state_dict

    def route(mod: torch.nn.Module, args: Any) -> None:
        state.activate(state.choose())

    def base_keys(mod: torch.nn.Module, sd: dict[str, Any], prefix: str, meta: Any) -> None:
        if state.raw:
            return
        items = list(sd.items())
        sd.clear()
        for key, value in items:
            if not key.startswith(prefix):
                sd[key] = value
                continue
            clean = _clean_key(state, key[len(prefix):])
            if clean is not None:
                sd[prefix + clean] = value

    def peft_keys(mod: torch.nn.Module, sd: dict[str, Any], prefix: str, *rest: Any) -> None:
        for key in [k for k in sd if k.startswith(prefix)]:
            raw = _raw_key(state, key[len(prefix):])
            if raw is not None:
                sd[prefix + raw] = sd.pop(key)

    module.register_forward_pre_hook(route)
    module.register_state_dict_post_hook(base_keys)
    module.register_load_state_dict_pre_hook(peft_keys)
    return state


def _split(state: _ModuleLora, key: str) -> tuple[str, str] | None:
    """``(tuner path, rest)`` for a key under an injected layer, else None."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        if head in state.tuner_paths:
            return head, ".".join(parts[i:])
    return None


def _clean_key(state: _ModuleLora, key: str) -> str | None:
    """The base model's name of a peft key; None for adapter tensors (saved apart)."""
    found = _split(state, key)
    if found is None:
        return key
    head, rest = found
    if rest.startswith("base_layer."):
        return f"{head}.{rest[len('base_layer.'):]}"
    return None


def _raw_key(state: _ModuleLora, key: str) -> str | None:
    """The peft name of a base-model key when loading a base checkpoint; None: leave it."""
    found = _split(state, key)
    if found is None:
        return None
    head, rest = found
    first = rest.split(".", 1)[0]
    layer = state.tuner_paths[head]
    adapter_attrs = set(layer.adapter_layer_names) | set(getattr(layer, "other_param_names", ()))
    if first == "base_layer" or first in adapter_attrs:
        return None
    return f"{head}.base_layer.{rest}"


@contextmanager
def _peft_named(state: _ModuleLora) -> Iterator[None]:
    """Inside, the module's state dict keeps peft's names (``base_layer``, adapter tensors):
    what peft's own state-dict helpers compare against."""
    state.raw += 1
    try:
        yield
    finally:
        state.raw -= 1


# ---------------------------------------------------------------- adapter slot
class LoraAdapter(Adapter):
    """One named LoRA adapter on one torch module (one base, maybe shared by several blocks)."""

    kind = "lora"

    def __init__(self, name: str, block: Block, module: torch.nn.Module) -> None:
        super().__init__(name)
        self.block = block
        self.module = module
        self._lora = _install(module)  # the module's routing and layer index (already there)
        self.sites: list[str] = []  # paths of the uses it covers (one module, maybe many blocks)

    def __repr__(self) -> str:
        return f"LoraAdapter({self.name!r}, block={self.block.block_id!r}, params={self.num_parameters()})"

    @property
    def lora_config(self) -> LoraConfig:
        return self._lora.adapters[self.name]

    @property
    def when(self) -> list[dict[str, str]]:
        return [dict(m) for m, n in self._lora.rules if n == self.name]

    @property
    def is_default(self) -> bool:
        return self._lora.default == self.name

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        for key, param in self.module.named_parameters():
            found = _split(self._lora, key)
            if found is not None and self.name in found[1].split(".") and not found[1].startswith("base_layer."):
                yield key, param

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        return (p for _, p in self.named_parameters())

    def _peft_state(self) -> dict[str, torch.Tensor]:
        """peft's adapter state dict (keys without the adapter name), the live tensors."""
        with _peft_named(self._lora):
            raw = dict(self.module.state_dict())
        return get_peft_model_state_dict(self.module, state_dict=raw, adapter_name=self.name)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """`_peft_state`, detached copies."""
        return {k: v.detach().clone().contiguous() for k, v in self._peft_state().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = set(self._peft_state())  # keys only: no copies
        given = set(state)
        if given != expected:
            raise AdapterError(
                f"LoRA adapter {self.name!r} on block {self.block.block_id!r}: "
                f"missing keys {sorted(expected - given)[:5]}, unexpected keys {sorted(given - expected)[:5]}"
            )
        with _peft_named(self._lora), torch.no_grad():
            result = set_peft_model_state_dict(self.module, dict(state), adapter_name=self.name)
        bad = [k for k in getattr(result, "unexpected_keys", []) if f".{self.name}." in k]
        if bad:
            raise AdapterError(f"LoRA adapter {self.name!r} on block {self.block.block_id!r}: not loaded {bad[:5]}")

    def config(self) -> dict[str, Any]:
        cfg = self.lora_config
        out: dict[str, Any] = {"kind": self.kind, "name": self.name, "block_id": self.block.block_id}
        out.update({f: getattr(cfg, f) for f in _CONFIG_FIELDS})
        out["target_modules"] = sorted(cfg.target_modules) if not isinstance(cfg.target_modules, str) else cfg.target_modules
        out["default"] = self.is_default
        out["when"] = self.when
        return out


def lora_adapters_of(block: Block) -> list[str]:
    """Names of the LoRA adapters on a block's module (empty when it has none)."""
    module = getattr(block, "module", None)
    state = _state(module) if isinstance(module, torch.nn.Module) else None
    return list(state.adapters) if state else []


# ---------------------------------------------------------------- the set
@dataclass
class LoraSet:
    """What `apply_lora` / `load_lora` did: the adapters (one per module and name), the
    parts skipped and why, and the blocks whose weights were frozen."""

    adapters: list[LoraAdapter] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    prompt_adapters: list[Any] = field(default_factory=list)  # PromptAdapters put on chat models

    def parameters(self) -> list[torch.nn.Parameter]:
        """Adapter parameters only, each once: what the optimizer should get (prompt
        adapters add none: they are trained by search, see `optimize_prompt`)."""
        return unique_parameters([*(a.trainable_parameters() for a in self.adapters),
                                  *(p.trainable_parameters() for p in self.prompt_adapters)])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def names(self) -> list[str]:
        return sorted({a.name for a in self.adapters})

    def config(self) -> dict[str, Any]:
        """``{"lora": [...], "prompt": [...]}`` — plain data, the two kinds kept apart."""
        return {"lora": [a.config() for a in self.adapters], "prompt": [p.config() for p in self.prompt_adapters]}

    def save(self, directory: str | PathLike[str]) -> list[Path]:
        """One ``lora_<name>.safetensors`` (tensors keyed ``<block_id>/<peft key>``) and one
        ``lora_<name>.json`` per adapter name; the base is not written here (its own level's
        `save` writes it, once). Returns the files written."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for name in self.names():
            tensors: dict[str, torch.Tensor] = {}
            blocks: dict[str, Any] = {}
            for adapter in (a for a in self.adapters if a.name == name):
                bid = adapter.block.block_id
                if bid in blocks:
                    raise AdapterError(f"adapter {name!r}: two modules under one block_id {bid!r}; rename a block")
                blocks[bid] = adapter.config()
                for key, value in adapter.state_dict().items():
                    tensors[f"{bid}/{key}"] = value
            meta = {"kind": "lora", "name": name, "format": "peft", "blocks": blocks}
            weights, cfg = root / f"lora_{name}.safetensors", root / f"lora_{name}.json"
            save_file(tensors, str(weights), metadata={"kind": "lora", "name": name})
            cfg.write_text(json.dumps(meta, indent=2, sort_keys=True))
            written += [weights, cfg]
        for prompt in self.prompt_adapters:
            path = root / f"prompt_{prompt.name}.json"
            path.write_text(json.dumps(prompt.config(), indent=2, sort_keys=True))
            written.append(path)
        return written


# ---------------------------------------------------------------- public functions
def apply_lora(
    obj: Any,
    *,
    rank: int = 4,
    alpha: float | None = None,
    targets: str | Sequence[str] | None = None,
    name: str = "default",
    modules: str | Sequence[str] = "all-linear",
    when: Mapping[str, str] | None = None,
    dropout: float = 0.0,
    init_lora_weights: bool | str = True,
    freeze_base: bool = True,
    prompt_adapters: bool = False,
) -> LoraSet:
    """Add LoRA adapter `name` to every eligible block under `obj` and freeze every base weight.

    Eligible: a block whose ``module`` is a torch module with parameters and layers that
    `modules` selects (peft ``target_modules``; ``"all-linear"`` by default), not an API
    block, and named by `targets` (roles, block types, block ids, node ids or
    ``graph_id.node_id``; None = all). Every other block is frozen (`Block.freeze`).
    `when` routes this adapter by call context (see the module doc); without it the
    adapter is the block's default. `alpha` defaults to `rank`. With `prompt_adapters`,
    each chat model found in a block-less part (an agent's ``llm``) is wrapped in a
    `PromptAdaptedChatModel` named ``<stage>_<name>`` (no torch parameters; train it with
    `optimize_prompt`)."""
    if rank < 1:
        raise AdapterError(f"rank must be >= 1, got {rank}")
    if when is not None:
        when = {str(k): str(v) for k, v in when.items()}
    result = LoraSet()
    by_module: dict[int, LoraAdapter] = {}
    chosen: list[BlockSite] = []
    others: list[BlockSite] = []
    unmatched: list[str] = []  # eligible, but not in targets
    prompt_slots: list[OtherSite] = []  # block-less parts with a chat model
    for site in walk(obj):
        if isinstance(site, OtherSite):
            result.skipped.append((site.path, site.reason))
            if site.llm is not None:
                prompt_slots.append(site)
            continue
        reason = _ineligible(site.block, getattr(site.block, "module", None))
        if reason is None and not site.matches(targets):
            reason = "not in targets"
        if reason is None:
            chosen.append(site)
            continue
        others.append(site)
        if reason == "not in targets":
            unmatched.append(site.path)
        if reason != "no parameters":
            result.skipped.append((site.path, reason))
    if targets is not None and not chosen:  # before anything is frozen
        raise AdapterError(f"apply_lora: no eligible block matches targets {targets!r} "
                           f"(eligible blocks: {sorted(set(unmatched))})")
    for site in others:  # first freeze what gets no adapter, so a shared module is not refrozen later
        if freeze_base and any(True for _ in site.block.trainable_parameters()):
            site.block.freeze()
            result.frozen.append(site.path)
    for site in chosen:
        block, module = site.block, site.block.module  # type: ignore[attr-defined]
        adapter = by_module.get(id(module))
        if adapter is None:
            adapter = _attach(block, module, site.path, name, when, rank=rank, alpha=alpha, modules=modules,
                              dropout=dropout, init_lora_weights=init_lora_weights)
            by_module[id(module)] = adapter
            result.adapters.append(adapter)
        adapter.sites.append(site.path)
        if freeze_base:
            _freeze_base(block, module)
            result.frozen.append(site.path)
    if prompt_adapters:
        from worldgen.adapters.prompt import PromptAdaptedChatModel, PromptAdapter

        for site in prompt_slots:
            if isinstance(site.llm, PromptAdaptedChatModel):
                result.prompt_adapters.append(site.llm.adapter)
                continue
            stage = site.context.get("stage_id") or site.path
            wrapped = PromptAdaptedChatModel(inner=site.llm, adapter=PromptAdapter(f"{stage}_{name}"))
            result.prompt_adapters.append(wrapped.adapter)
            try:
                site.obj.llm = wrapped
            except (AttributeError, TypeError, ValueError) as exc:
                raise AdapterError(f"{site.path}: cannot put a prompt adapter on its chat model ({exc})") from exc
    return result


def load_lora(obj: Any, directory: str | PathLike[str], names: Sequence[str] | None = None) -> LoraSet:
    """Put the adapters that `LoraSet.save` wrote back on the blocks under `obj` (matched by
    block_id), with their routing; the base must already be loaded. Returns them as a set."""
    root = Path(directory)
    files = sorted(root.glob("lora_*.json"))
    if names is not None:
        files = [root / f"lora_{n}.json" for n in names]
    prompts = sorted(root.glob("prompt_*.json")) if names is None else []
    if not files and not prompts:
        raise AdapterError(f"load_lora: no lora_<name>.json or prompt_<name>.json in {str(root)!r}")
    blocks: dict[str, tuple[Block, str]] = {}
    slots: list[OtherSite] = []
    for site in walk(obj):
        if isinstance(site, BlockSite):
            blocks.setdefault(site.block.block_id, (site.block, site.path))
        elif site.llm is not None:
            slots.append(site)
    result = LoraSet()
    if prompts:
        _load_prompts(prompts, slots, result)
    for cfg_path in files:
        if not cfg_path.is_file():
            raise AdapterError(f"load_lora: {str(cfg_path)!r} does not exist")
        meta = json.loads(cfg_path.read_text())
        if meta.get("kind") != "lora":
            raise AdapterError(f"{str(cfg_path)!r}: kind {meta.get('kind')!r} is not 'lora'")
        name = meta["name"]
        tensors = load_file(str(root / f"lora_{name}.safetensors"))
        for bid, cfg in meta["blocks"].items():
            if bid not in blocks:
                raise AdapterError(f"adapter {name!r}: no block {bid!r} under {type(obj).__name__} (blocks: {sorted(blocks)})")
            block, path = blocks[bid]
            module = getattr(block, "module", None)
            reason = _ineligible(block, module)
            if reason is not None:
                raise AdapterError(f"adapter {name!r}: block {bid!r} cannot take LoRA ({reason})")
            assert isinstance(module, torch.nn.Module)
            state = _state(module)
            when_rules = cfg.get("when") or []
            if state is not None and name in state.adapters:
                adapter = LoraAdapter(name, block, module)
            else:
                adapter = _attach(
                    block, module, path, name, when_rules[0] if when_rules else None, rank=cfg["r"],
                    alpha=cfg["lora_alpha"], modules=cfg["target_modules"], dropout=cfg["lora_dropout"],
                    init_lora_weights=cfg["init_lora_weights"], extra={k: cfg[k] for k in ("bias", "use_rslora", "use_dora")},
                    default=cfg.get("default", not when_rules),
                )
                adapter._lora.rules += [(dict(r), name) for r in when_rules[1:]]
            prefix = f"{bid}/"
            adapter.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            _freeze_base(block, module)
            adapter.sites.append(path)
            result.adapters.append(adapter)
    return result


# ---------------------------------------------------------------- private
def _load_prompts(files: list[Path], slots: list[OtherSite], result: LoraSet) -> None:
    """Put each saved prompt adapter back on the chat model of its stage (its name is
    ``<stage>_<name>``, as `apply_lora(prompt_adapters=True)` made it)."""
    from worldgen.adapters.prompt import PromptAdaptedChatModel, PromptAdapter

    for path in files:
        adapter = PromptAdapter.from_config(json.loads(path.read_text()))
        site = next((s for s in slots if adapter.name.startswith(f"{s.context.get('stage_id') or s.path}_")), None)
        if site is None:
            raise AdapterError(
                f"prompt adapter {adapter.name!r} ({str(path)!r}): no chat model of a stage it names "
                f"(chat models at: {[s.path for s in slots]})"
            )
        llm = site.obj.llm if site.obj is not site.llm else site.llm
        if isinstance(llm, PromptAdaptedChatModel):
            llm.adapter.load_state_dict(adapter.state_dict())
            result.prompt_adapters.append(llm.adapter)
        else:
            site.obj.llm = PromptAdaptedChatModel(inner=llm, adapter=adapter)
            result.prompt_adapters.append(adapter)


def _ineligible(block: Block, module: Any) -> str | None:
    if "api" in (str(block.config.get("backend", "")).lower(), str(getattr(block, "backend", "")).lower()):
        return "API block: no weight LoRA (use a prompt adapter)"
    if not isinstance(module, torch.nn.Module):
        return "no parameters" if not any(True for _ in block.local_parameters()) else "no torch module (no adapter slot)"
    if not any(True for _ in module.parameters()):
        return "no parameters"
    if isinstance(module, torch.nn.Linear | torch.nn.Conv2d | torch.nn.Embedding):
        return f"its module is a bare {type(module).__name__}; wrap it (e.g. nn.Sequential) to give LoRA a layer to replace"
    return None


def _attach(
    block: Block,
    module: torch.nn.Module,
    path: str,
    name: str,
    when: Mapping[str, str] | None,
    *,
    rank: int,
    alpha: float | None,
    modules: str | Sequence[str],
    dropout: float,
    init_lora_weights: bool | str,
    extra: Mapping[str, Any] | None = None,
    default: bool | None = None,
) -> LoraAdapter:
    state = _install(module)
    if name in state.adapters:
        raise AdapterError(
            f"block {block.block_id!r} (at {path}): its module already has a LoRA adapter {name!r}; "
            f"pick another name (adapters: {sorted(state.adapters)})"
        )
    as_default = when is None if default is None else default
    if as_default and state.default is not None:
        raise AdapterError(
            f"block {block.block_id!r} (at {path}): adapter {state.default!r} is already the default; "
            f"give {name!r} a when={{...}} (graph_id / node_id / stage_id / role) to route by call context"
        )
    config = LoraConfig(
        r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
        target_modules=modules if isinstance(modules, str) else list(modules),
        init_lora_weights=init_lora_weights, **dict(extra or {}),
    )
    try:
        with warnings.catch_warnings():  # several adapters on one module is the point here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(config, module, adapter_name=name)
    except ValueError as exc:
        raise AdapterError(f"block {block.block_id!r} (at {path}): peft could not inject LoRA {name!r}: {exc}") from exc
    state.adapters[name] = module.peft_config[name]
    if as_default:
        state.default = name
    elif when is not None:
        state.rules.append((dict(when), name))
    state.reindex(module)
    return LoraAdapter(name, block, module)


def _freeze_base(block: Block, module: torch.nn.Module) -> None:
    """Base weights off, every adapter on this module on; the block itself stays listed."""
    if block.frozen:
        block.unfreeze()
    state = _state(module)
    assert state is not None
    for key, param in module.named_parameters():
        found = _split(state, key)
        param.requires_grad_(found is not None and not found[1].startswith("base_layer."))
