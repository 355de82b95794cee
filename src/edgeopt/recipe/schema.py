"""A recipe: data, a baseline, a target, constraints and named variants (chains of steps).

```yaml
name: week2
out_dir: runs/week2
data: {name: fashion-mnist}
baseline:                       # train here (model + train), or load `checkpoint:`
  model: {name: simple_cnn}
  train: {epochs: 3, lr: 0.05}
target: {formats: [onnx], threads: 1, latency_runs: 100}
constraints: {max_latency_ms: 2.0, max_drop: 1.0}
variants:
  int8: [quantize: {backend: onnxruntime}]
  pruned 50 + int8:
    - prune: {method: structured, ratio: 0.5, finetune_epochs: 2}
    - quantize: {backend: onnxruntime}
```

Every step's config is the dataclass the Python API and the CLI use (PruneConfig,
TrainConfig, DistillConfig, QuantConfig, ...): the registry in :mod:`edgeopt.recipe.steps`
says which. The whole recipe is validated before any work starts; an error names the file,
the line and the key (``recipes/x.yaml:14: variants.small[0].prune: PruneConfig.ratio=1.5
must be in [0.0, 1.0)``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

from edgeopt.config import Config
from edgeopt.errors import ConfigError
from edgeopt.recipe.yaml_lines import KeyPath, format_path, line_of, load_with_lines

TOP_KEYS = ("name", "description", "out_dir", "data", "baseline", "target", "constraints", "variants")
BASELINE_NAME = "baseline"


@dataclasses.dataclass(frozen=True)
class TargetConfig(Config):
    """Where and how every variant is measured.

    Attributes:
        formats: the fp32 exports of the baseline and of every variant whose chain ends in
            a model (no ``quantize``/``export`` step); ``[]``: eager PyTorch only.
        threads: intra-op threads for every timing and the memory probe.
        latency_runs / warmup: timed and untimed batch-1 runs.
        throughput_batch: batch size of the throughput measurement (0: none).
        memory: measure peak memory (a child process per variant).
        split: the held-out split the accuracy is measured on.
        verify: check every export against its PyTorch model (parity).
        eager: also measure the baseline in eager PyTorch (the reference row).
    """

    formats: tuple[str, ...] = ("onnx",)
    threads: int = 1
    latency_runs: int = 100
    warmup: int = 10
    throughput_batch: int = 64
    memory: bool = True
    split: str = "test"
    verify: bool = True
    eager: bool = True

    def validate(self) -> None:
        from edgeopt.export import list_formats

        for fmt in self.formats:
            if fmt not in list_formats():
                raise ConfigError(f"TargetConfig.formats: unknown format '{fmt}'; choices: {', '.join(list_formats())}")
        self._check_threads("threads")
        self._check_range("latency_runs", 1, None)
        self._check_range("warmup", 0, None)
        self._check_batch_size("throughput_batch", lo=0)
        self._check_choice("split", ("val", "test"))

    def eval_kwargs(self, progress: bool) -> dict[str, Any]:
        """The keyword arguments of :func:`edgeopt.evaluate.evaluate_variant`."""
        return dict(threads=self.threads, latency_runs=self.latency_runs, latency_warmup=self.warmup,
                    throughput_batch=self.throughput_batch, memory=self.memory, split=self.split,
                    progress=progress)


@dataclasses.dataclass(frozen=True)
class BaselineConfig(Config):
    """The model every variant starts from: trained here, or loaded from a checkpoint.

    Attributes:
        model: the architecture (a ModelConfig: zoo name, ``tv:NAME``; ``weights`` to start
            from). Ignored with ``checkpoint``.
        train: TrainConfig fields; training runs when this is given and ``checkpoint`` is not.
        checkpoint: an edgeopt checkpoint (``edgeopt train`` or ``edgeopt import`` wrote it);
            its ModelSpec (preprocessing, classes) is the run's.
    """

    model: dict = dataclasses.field(default_factory=lambda: {"name": "simple_cnn"})
    train: dict | None = None
    checkpoint: str | None = None

    def validate(self) -> None:
        from edgeopt.pipeline import ModelConfig
        from edgeopt.train import TrainConfig

        if self.checkpoint is None:
            ModelConfig.from_dict(self.model)
            if self.train is None and not self.model.get("weights"):
                raise ConfigError("baseline needs `train:` (train here), `checkpoint:` (an edgeopt checkpoint) "
                                  "or model.weights")
        if self.train is not None:
            TrainConfig.from_dict(self.train)

    def model_config(self):
        from edgeopt.pipeline import ModelConfig

        return ModelConfig.from_dict(self.model)

    def train_config(self):
        from edgeopt.train import TrainConfig

        return TrainConfig.from_dict(self.train or {})


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """One step of a variant: its registered name, its parsed config and where it was written."""

    name: str
    config: Any
    raw: dict[str, Any]
    path: KeyPath

    def config_dict(self) -> dict[str, Any]:
        """What the step's cache key is computed from."""
        c = self.config
        return c.to_dict() if hasattr(c, "to_dict") else dict(c)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated recipe (see the module docstring); build it with :func:`load_recipe`."""

    name: str
    out_dir: str
    data: Any  # edgeopt.pipeline.DataConfig
    baseline: BaselineConfig
    target: TargetConfig
    constraints: Any  # edgeopt.evaluate.constraints.Constraints
    variants: dict[str, tuple[StepSpec, ...]]
    raw: dict[str, Any]
    source: str = "<dict>"
    description: str = ""

    def only(self, names: list[str] | tuple[str, ...]) -> "Recipe":
        """The same recipe with only ``names`` among its variants (the baseline is always run)."""
        unknown = [n for n in names if n not in self.variants]
        if unknown:
            raise ConfigError(f"--only: no variant {', '.join(map(repr, unknown))} in {self.source}; "
                              f"variants: {', '.join(self.variants) or '(none)'}")
        return dataclasses.replace(self, variants={n: s for n, s in self.variants.items() if n in names})


class _Errors:
    """Prefixes a ConfigError with ``file:line: key path:``."""

    def __init__(self, source: str, lines: dict[KeyPath, int]) -> None:
        self.source, self.lines = source, lines

    def where(self, path: KeyPath, msg: str) -> ConfigError:
        # the most precise line: a field the message names (PruneConfig.ratio=...), if written
        m = re.search(r"\b[A-Z]\w*Config\.(\w+)", msg)
        if m and path + (m.group(1),) in self.lines:
            path = path + (m.group(1),)
        line = line_of(self.lines, path)
        loc = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{loc}: {format_path(path)}: {msg}")

    def build(self, path: KeyPath, fn, *args):
        try:
            return fn(*args)
        except ConfigError as exc:
            raise self.where(path, str(exc)) from None


def _mapping(errors: _Errors, value: Any, path: KeyPath) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.where(path, f"must be a mapping, got {type(value).__name__}")
    return value


def _step_items(errors: _Errors, chain: Any, path: KeyPath) -> list[tuple[str, dict[str, Any], KeyPath]]:
    from edgeopt.recipe.steps import STEPS

    if isinstance(chain, (str, dict)):
        chain = [chain]
    if not isinstance(chain, list) or not chain:
        raise errors.where(path, "a variant is a list of steps, e.g. [prune: {ratio: 0.5}, quantize: {}]")
    items = []
    for i, item in enumerate(chain):
        p = path + (i,)
        if isinstance(item, str):
            name, cfg = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, cfg = next(iter(item.items()))
            cfg = _mapping(errors, cfg, p + (name,))
            p = p + (name,)
        else:
            raise errors.where(p, f"a step is `name` or `name: {{config}}` (one key), got {item!r}")
        if name not in STEPS:
            raise errors.where(p, f"unknown step {name!r}; steps: {', '.join(STEPS.names())}")
        items.append((name, cfg, p))
    return items


def _parse_variant(errors: _Errors, name: str, chain: Any, path: KeyPath, recipe_ctx: dict) -> tuple[StepSpec, ...]:
    from edgeopt.recipe.steps import STEPS

    items = _step_items(errors, chain, path)
    # `quantize` then `export: {formats: [...]}`: one int8 artifact per format
    if len(items) >= 2 and items[-2][0] == "quantize" and items[-1][0] == "export":
        (qn, qcfg, qp), (_, ecfg, ep) = items[-2], items[-1]
        extra = set(ecfg) - {"formats"}
        if extra:
            raise errors.where(ep, f"after quantize, export takes only `formats` (got {', '.join(sorted(extra))})")
        items = items[:-2] + [(qn, {**qcfg, "formats": ecfg.get("formats", [])}, qp)]
    steps = []
    for i, (sname, cfg, p) in enumerate(items):
        kind = STEPS.get(sname)
        if kind.terminal and i != len(items) - 1:
            raise errors.where(p, f"{sname} makes the deployed file, so it must be the last step "
                                  f"(or quantize followed by export)")
        if kind.first_only and i != 0:
            raise errors.where(p, f"{sname} trains a fresh model, so it must be the first step")
        config = errors.build(p, kind.parse, cfg, recipe_ctx)
        steps.append(StepSpec(sname, config, dict(cfg), p))
    return tuple(steps)


def parse_recipe(data: dict[str, Any], lines: dict[KeyPath, int] | None = None,
                 source: str = "<dict>") -> Recipe:
    """Validate a recipe mapping and build a :class:`Recipe`.

    Raises:
        ConfigError: the first problem, with the file, line and key path.

    Example:
        >>> r = parse_recipe({"name": "x", "data": {"name": "digits"},
        ...                   "baseline": {"model": {"name": "simple_cnn"}, "train": {"epochs": 1}},
        ...                   "variants": {"int8": [{"quantize": {"backend": "onnxruntime"}}]}})
        >>> [s.name for s in r.variants["int8"]]
        ['quantize']
    """
    from edgeopt.evaluate.constraints import Constraints
    from edgeopt.pipeline import DataConfig

    errors = _Errors(source, lines or {})
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise errors.where((unknown[0],), f"unknown key; a recipe has {', '.join(TOP_KEYS)}")
    name = data.get("name") or (Path(source).stem if source != "<dict>" else "recipe")
    if not isinstance(name, str):
        raise errors.where(("name",), f"must be a string, got {name!r}")
    out_dir = data.get("out_dir") or f"runs/{name}"
    if not isinstance(out_dir, str):
        raise errors.where(("out_dir",), f"must be a string, got {out_dir!r}")
    dcfg = errors.build(("data",), DataConfig.from_dict, _mapping(errors, data.get("data"), ("data",)))
    if dcfg.name is None:
        raise errors.where(("data", "name"), "the dataset is required (see `edgeopt datasets`)")
    base = errors.build(("baseline",), BaselineConfig.from_dict,
                        _mapping(errors, data.get("baseline"), ("baseline",)) or {"train": {}})
    target = errors.build(("target",), TargetConfig.from_dict, _mapping(errors, data.get("target"), ("target",)))
    cons = errors.build(("constraints",), Constraints.from_dict,
                        _mapping(errors, data.get("constraints"), ("constraints",)))
    variants_raw = _mapping(errors, data.get("variants"), ("variants",))
    ctx = {"baseline": base}
    variants = {}
    for vname, chain in variants_raw.items():
        if not isinstance(vname, str) or not vname.strip():
            raise errors.where(("variants",), f"a variant name must be a non-empty string, got {vname!r}")
        if vname == BASELINE_NAME:
            raise errors.where(("variants", vname), f"'{BASELINE_NAME}' is the run's own model; pick another name")
        variants[vname] = _parse_variant(errors, vname, chain, ("variants", vname), ctx)
    desc = data.get("description") or ""
    return Recipe(name=name, out_dir=out_dir, data=dcfg, baseline=base, target=target, constraints=cons,
                  variants=variants, raw=data, source=source, description=str(desc))


def shipped_recipes() -> dict[str, Path]:
    """``{name: path}`` of the recipes edgeopt ships (``recipes/`` in the repository)."""
    folder = Path(__file__).resolve().parent.parent / "recipes"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_recipe(path: str | Path) -> Path:
    """A recipe file, or the name of a shipped one (``demo``, ``workshop-fmnist``...).

    Raises:
        ConfigError: neither a file nor a shipped name.
    """
    p = Path(path)
    if p.exists():
        return p
    shipped = shipped_recipes()
    if str(path) in shipped:
        return shipped[str(path)]
    raise ConfigError(f"recipe not found: {path} (not a file, nor a shipped recipe: {', '.join(shipped)})")


def load_recipe(path: str | Path, overrides: Callable[[dict[str, Any]], None] | None = None) -> Recipe:
    """Load and validate a recipe file (YAML, or JSON) or a shipped recipe by name.

    Args:
        path: the file, or a shipped recipe's name (:func:`shipped_recipes`).
        overrides: called with the loaded mapping before validation (command-line flags).
    """
    p = resolve_recipe(path)
    data, lines = load_with_lines(p)
    if overrides is not None:
        overrides(data)
    return parse_recipe(data, lines, str(path))
