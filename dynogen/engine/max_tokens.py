"""Resolving ``--max-tokens auto`` for one run, once (the I/O side of ``dynogen.engine.lengths``).

Where the figure comes from, first that applies:

1. ``recorded``: the run directory's manifest (a resumed run keeps what it started
   with, so its request bodies, cache keys and batch lines stay the same; not
   with ``--force-new``, which starts over where the settings differ);
2. ``calibration``: an earlier run's ``calibration.json`` (``--calibration``, or for
   ``grow`` the collection's last version);
3. ``pilot``: the run's first ``PILOT_REQUESTS`` requests, sent at the ceiling
   (``--max-tokens``) through the run's own executor — cached, budgeted and journaled
   like any request. Their answers only size the run: those units are asked again at
   the resolved figure, so every committed answer comes from the same request settings.
   A batch run cannot wait for a pilot batch and asks for a calibration instead.

The result is written into the config (``max_tokens_by_variant``) and so into the
manifest's identity. Too few answers (a pilot whose requests failed) leave the ceiling.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dynogen.config import Config
from dynogen.engine.calibration import Calibration
from dynogen.engine.engine import TaskEngine  # its own request: same body, same key
from dynogen.engine.lengths import PILOT_REQUESTS, Lengths, format_by_variant, resolve
from dynogen.errors import BadRequestError, ConfigError, RequestFailed, Stopped
from dynogen.execute.base import Accounting, Executor, Request
from dynogen.prompts.builder import PromptBuilder
from dynogen.prompts.dialect import Dialect
from dynogen.units import Skipped, Unit, skip_reason

__all__ = ["Sizing", "pilot", "plan"]


@dataclass(frozen=True, slots=True)
class Sizing:
    """How a run's ``max_tokens`` was set (for the report)."""

    source: str  # fixed | recorded | calibration | pilot | ceiling
    by_variant: str
    answers: int = 0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "by_variant": self.by_variant, "answers": self.answers,
                "detail": self.detail}


def plan(cfg: Config) -> tuple[Config, Sizing | None]:
    """Resolve what can be resolved before the run starts. ``Sizing`` is ``None`` when a
    pilot must run first (see ``pilot``)."""
    if not cfg.max_tokens_auto or cfg.max_tokens_by_variant:
        return cfg, Sizing("fixed", cfg.max_tokens_by_variant)
    # --force-new asks for a fresh run where settings differ: size it afresh too.
    recorded = _recorded(Path(cfg.out)) if cfg.out and not cfg.force_new else None
    if recorded is not None:
        return cfg.with_(max_tokens_by_variant=recorded), Sizing(
            "recorded", recorded, detail=str(Path(cfg.out) / "manifest.json"))
    if cfg.calibration:
        cal = Calibration.load(cfg.calibration)
        by = resolve(cal.lengths, cfg.variants, cfg.max_tokens)
        if by is None:
            raise ConfigError(
                f"--max-tokens auto: {cal.source} holds {cal.lengths.answers()} answer lengths, "
                "too few to size max_tokens from (a run written by an older dynogen records "
                "none); leave --calibration out to size from this run's first answers")
        text = format_by_variant(by)
        return cfg.with_(max_tokens_by_variant=text), Sizing(
            "calibration", text, cal.lengths.answers(), cal.source)
    if cfg.mode == "batch":
        raise ConfigError(
            "--max-tokens auto in batch mode needs --calibration (an earlier run's "
            "directory or calibration.json): sizing from first answers would wait for a batch")
    return cfg, None


def _recorded(out: Path) -> str | None:
    """The figure a run in ``out`` already uses, if it has started (``None``: fresh)."""
    try:
        manifest = orjson.loads((out / "manifest.json").read_bytes())
        ident = manifest["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # fresh, or spoiled (RunDir.open says so in its own words)
    recorded = ident.get("max_tokens_by_variant") if isinstance(ident, dict) else None
    if recorded:
        return str(recorded)
    units = out / "units.jsonl"
    if units.exists() and units.stat().st_size:
        return ""  # begun without auto: keep its settings (any change is refused anyway)
    return None


async def pilot(cfg: Config, executor: Executor, prompts: PromptBuilder,
                source: Iterable[Unit | Skipped]
                ) -> tuple[Config, Sizing, Iterator[Unit | Skipped]]:
    """Send the first requests at the ceiling and size from their answers.

    Returns the resolved config, how it was resolved, and the source with the units
    read ahead put back in front.
    """
    it = iter(source)
    head: list[Unit | Skipped] = []
    reqs: list[tuple[str, Request]] = []
    dialect = Dialect(format=cfg.response_format)
    for item in it:
        head.append(item)
        if isinstance(item, Unit) and not skip_reason(item):
            reqs.extend((v, TaskEngine._request(prompts, item, v, cfg.max_tokens, dialect))
                        for v in cfg.variants)
        if len(reqs) >= PILOT_REQUESTS:
            break
    lengths = Lengths()
    failed: Counter[str] = Counter()

    async def one(variant: str, req: Request) -> None:
        try:
            comp = await executor.complete(req, Accounting())
        except RequestFailed as e:
            failed[e.reason] += 1
        except BadRequestError:
            # A parameter the server refuses (json_schema, max_tokens...): the engine
            # adapts its dialect on the first such answer; the pilot only counts it.
            failed["bad_request"] += 1
        except Stopped:
            failed["stopped"] += 1
        else:
            lengths.observe(variant, comp.usage, comp.finish_reason)

    outcomes = await asyncio.gather(*(one(v, r) for v, r in reqs), return_exceptions=True)
    for o in outcomes:  # a budget or fatal error stops the run as it would any request
        if isinstance(o, BaseException):
            raise o
    rest = itertools.chain(head, it)
    by = resolve(lengths, cfg.variants, cfg.max_tokens)
    if by is None:
        why = ", ".join(f"{n} {r}" for r, n in sorted(failed.items())) or "none failed"
        return cfg, Sizing("ceiling", "", lengths.answers(),
                           f"{len(reqs)} pilot requests ({why}): too few answers"), rest
    text = format_by_variant(by)
    return cfg.with_(max_tokens_by_variant=text), Sizing(
        "pilot", text, lengths.answers(), f"{len(reqs)} pilot requests"), rest
