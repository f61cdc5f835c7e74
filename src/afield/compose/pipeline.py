"""The compose pipeline: an ordered list of stages, each identified by a hash chain.

A stage is one module in :mod:`afield.compose.stages` with ``NAME``, ``CHECKPOINT``, a JSON schema
file beside it and ``run(ctx, options) -> facts``. The id of stage *i* is the sha256 of canonical
JSON of ``(name, options, id of stage i-1)``, so changing a stage's options changes its id and the
ids of every stage after it, and nothing before it.

Resuming follows osbuild's model: the pipeline walks back from the last stage to the newest one
whose result is in the cache (a checkpointed tree, or the final commit still present in the
repository), restores it, and runs only the stages after it.

What it leaves to others: what the stages are (:mod:`afield.compose.plan`), what they do
(the stage modules), and how progress is shown (the caller's :class:`Reporter`).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib
import json
import pkgutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, cast

from afield.compose import stages as _stages_pkg
from afield.compose._cache import StageCache
from afield.compose._workspace import Workspace, clean_stale
from afield.errors import ComposeError, StageError

__all__ = [
    "Facts",
    "PipelineResult",
    "Reporter",
    "StageContext",
    "StageModule",
    "StageSpec",
    "load_stage",
    "registry",
    "run_pipeline",
    "stage_ids",
]

Facts = dict[str, Any]


class StageModule(Protocol):
    """What a stage module provides."""

    NAME: str
    CHECKPOINT: bool

    def run(self, ctx: StageContext, options: Mapping[str, Any]) -> Facts: ...


@dataclass(frozen=True)
class StageSpec:
    """One step of a pipeline: a stage name and its options (JSON values only)."""

    name: str
    options: Mapping[str, Any]


@dataclass
class StageContext:
    """What a running stage may use: the tree it changes and what earlier stages found out.

    Attributes:
        tree: the OS tree being built (a directory, owned by root).
        workdir: scratch space for this compose, removed afterwards.
        cache_dir: the compose cache (``debs/`` holds downloaded packages).
        facts: everything earlier stages returned, merged (read it, do not change it).
        log: writes one line of stage output to the compose log.
        extra: values the caller hands to stages that are not part of any stage id (the
            target repository of the commit stage).
    """

    tree: Path
    workdir: Path
    cache_dir: Path
    facts: Mapping[str, Any]
    log: Callable[[str], None]
    extra: Mapping[str, Any] = field(default_factory=dict)


class Reporter(Protocol):
    """Receives progress from a running pipeline."""

    def stage_started(self, index: int, total: int, name: str) -> None: ...

    def stage_finished(self, index: int, name: str, seconds: float, cached: bool) -> None: ...

    def log(self, line: str) -> None: ...


class _QuietReporter:
    def stage_started(self, index: int, total: int, name: str) -> None:
        pass

    def stage_finished(self, index: int, name: str, seconds: float, cached: bool) -> None:
        pass

    def log(self, line: str) -> None:
        pass


@dataclass(frozen=True)
class PipelineResult:
    """The facts of the whole pipeline, and which stages ran versus came from the cache."""

    facts: Facts
    ran: tuple[str, ...]
    cached: tuple[str, ...]
    stage_seconds: Mapping[str, float]


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def stage_code(name: str) -> str:
    """sha256 of a stage's module source and schema: a changed stage never reuses old results."""
    module = registry().get(name)
    if module is None:
        raise ComposeError(f"unknown stage {name!r}")
    source = Path(cast(str, module.__file__))
    digest = hashlib.sha256(source.read_bytes())
    digest.update(source.with_suffix(".json").read_bytes())
    # The helpers every stage runs commands and resolves paths with.
    digest.update((Path(__file__).parent / "_tree.py").read_bytes())
    return digest.hexdigest()


def stage_ids(specs: list[StageSpec]) -> list[str]:
    """The hash-chain id of every stage in ``specs``.

    Stage *i*'s id covers its name, options and code and the id of stage *i-1*.
    """
    ids: list[str] = []
    previous = ""
    for spec in specs:
        digest = hashlib.sha256(
            _canonical(
                {
                    "name": spec.name,
                    "options": spec.options,
                    "code": stage_code(spec.name),
                    "input": previous,
                }
            )
        ).hexdigest()
        ids.append(digest)
        previous = digest
    return ids


@functools.cache
def registry() -> dict[str, ModuleType]:
    """Every stage module by its ``NAME``."""
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(_stages_pkg.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{_stages_pkg.__name__}.{info.name}")
        name = getattr(module, "NAME", None)
        if isinstance(name, str):
            found[name] = module
    return found


def stage_schema(module: ModuleType) -> dict[str, Any]:
    """The JSON schema that sits beside a stage module (``<module>.json``)."""
    path = Path(cast(str, module.__file__)).with_suffix(".json")
    return cast(dict[str, Any], json.loads(path.read_text()))


def load_stage(name: str) -> StageModule:
    """The stage module called ``name``; :class:`ComposeError` if there is none."""
    stages = registry()
    if name not in stages:
        raise ComposeError(f"unknown stage {name!r}; known stages: {', '.join(sorted(stages))}")
    return cast(StageModule, stages[name])


def _validate(spec: StageSpec) -> StageModule:
    module = registry().get(spec.name)
    if module is None:
        raise ComposeError(f"unknown stage {spec.name!r}")
    # Imported here: jsonschema is a builder dependency, and the device's afield command (which
    # imports this package through the CLI) must start without it.
    import jsonschema

    try:
        jsonschema.validate(dict(spec.options), stage_schema(module))
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(options)"
        raise StageError(spec.name, f"invalid options at {where}: {e.message}") from e
    return cast(StageModule, module)


def _run_stage(module: StageModule, spec: StageSpec, ctx: StageContext) -> Facts:
    """Run one stage, turning its failures into :class:`StageError` naming it."""
    try:
        return module.run(ctx, spec.options)
    except StageError:
        raise
    except ComposeError as e:
        raise StageError(spec.name, e.message, user_error=e.user_error) from e
    except OSError as e:
        raise StageError(spec.name, str(e)) from e


@contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """Hold the cache's lock: composes sharing a cache run one at a time."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_pipeline(
    specs: list[StageSpec],
    *,
    cache_dir: Path,
    reporter: Reporter | None = None,
    extra: Mapping[str, Any] | None = None,
    is_reusable: Callable[[Facts], bool] = lambda facts: True,
    use_cache: bool = True,
) -> PipelineResult:
    """Run ``specs`` in order, resuming from the cache where possible.

    Args:
        specs: the stages, in order; the last one's facts are cached as the pipeline's result.
        cache_dir: where checkpoints and downloaded packages are kept.
        reporter: receives progress; quiet when None.
        extra: values stages read from ``ctx.extra`` that are not part of stage ids.
        is_reusable: whether the cached result of the final stage still holds (e.g. its commit
            is still in the target repository); when not, the pipeline resumes from a checkpoint.
        use_cache: when False, run every stage and save nothing.
    """
    modules = [_validate(spec) for spec in specs]
    with _locked(cache_dir):
        return _run_locked(
            specs, modules, cache_dir, reporter or _QuietReporter(), extra, is_reusable, use_cache
        )


def _run_locked(
    specs: list[StageSpec],
    modules: list[StageModule],
    cache_dir: Path,
    report: Reporter,
    extra: Mapping[str, Any] | None,
    is_reusable: Callable[[Facts], bool],
    use_cache: bool,
) -> PipelineResult:
    ids = stage_ids(specs)
    cache = StageCache(cache_dir)
    total = len(specs)

    start = 0
    facts: Facts = {}
    restore_from: str | None = None
    if use_cache:
        final = cache.final_facts(ids[-1])
        if final is not None and is_reusable(final):
            for i, spec in enumerate(specs):
                report.stage_started(i, total, spec.name)
                report.stage_finished(i, spec.name, 0.0, True)
            cache.touch(ids[-1])
            names = tuple(s.name for s in specs)
            return PipelineResult(facts=final, ran=(), cached=names, stage_seconds={})
        for i in range(total - 1, -1, -1):
            if modules[i].CHECKPOINT and cache.has_checkpoint(ids[i]):
                restore_from = ids[i]
                start = i + 1
                break

    seconds: dict[str, float] = {}
    workroot = cache_dir / "work"
    clean_stale(workroot)
    workroot.mkdir(parents=True, exist_ok=True)
    space = Workspace(Path(tempfile.mkdtemp(prefix="compose-", dir=workroot)))
    try:
        if restore_from is not None:
            facts = cache.facts(restore_from)
            space.start_from(cache.checkpoint_tree(restore_from))
        else:
            space.start_empty()
        for i in range(start):
            report.stage_started(i, total, specs[i].name)
            report.stage_finished(i, specs[i].name, 0.0, True)
        for i in range(start, total):
            spec, module = specs[i], modules[i]
            report.stage_started(i, total, spec.name)
            began = time.monotonic()
            ctx = StageContext(
                tree=space.tree,
                workdir=space.workdir,
                cache_dir=cache_dir,
                facts=dict(facts),
                log=report.log,
                extra=extra or {},
            )
            facts = {**facts, **_run_stage(module, spec, ctx)}
            if use_cache and module.CHECKPOINT:
                space.checkpoint(cache, ids[i], facts)
            seconds[spec.name] = time.monotonic() - began
            report.stage_finished(i, spec.name, seconds[spec.name], False)
    finally:
        space.close()
    if use_cache:
        cache.save_final(ids[-1], facts)
        cache.prune()
    names = tuple(s.name for s in specs)
    return PipelineResult(
        facts=facts, ran=names[start:], cached=names[:start], stage_seconds=seconds
    )
