"""The dry run: what a run would cost and how long it would take, with no LLM call.

Every prompt is built exactly as ``run`` builds it (same ``PromptBuilder``,
same truncation, same schema), so prompt tokens are exact for OpenAI
encodings. Output tokens cannot be known in advance; they are given as

- ``low``: ``LOW_FRACTION`` of the expected figure (answers that keep one short task),
- ``expected``: the mean completion tokens per request from a calibration file
  that earlier runs write (``calibration.json`` in their run directory), else
  ``DEFAULT_EXPECTED_OUTPUT`` — measured on the fake and local servers for
  three tasks per answer;
- ``high``: ``max_tokens`` for every request and no prompt-cache discount, the most a
  run can be billed.

With ``--judge``, each kept task costs one more request: the estimate counts
its exact prompt (the unit's metadata and sample rows) for
``JUDGE_TASKS_EXPECTED`` kept tasks per answer (expected) and for
``max_tasks_per_unit`` (high), at ``JUDGE_EXPECTED_OUTPUT`` output tokens
expected and ``JUDGE_MAX_TOKENS`` at most.

Prompt caching is counted only for models that support it and only for the
part of the shared prefix a provider caches (OpenAI: prefixes of 1,024+
tokens, in 128-token steps): the schema, system prompt and few-shot turns of the
``shared`` prompt layout, every request after the first (``prompt_layout``,
``dynogen.prompts.layout``; the per-unit schema leaves nothing to cache). Online
and Batch costs are each of the layout that mode would send (``auto`` picks
``per_unit`` for batch); batch prices never stack with the cache discount.
Budget reservations are unchanged: a request reserves its worst case, uncached.

For a provider whose tokenizer is not at hand (Anthropic), prompts are counted
with ``--encoding`` and adjusted by the provider's known additions (the
tool-use system prompt, ``compose.prompt_count``): an approximation, which the
report says; a run's budget still reserves an upper bound (see
``execute.anthropic_wire``).

The report names where the price comes from (``Price.describe``: the
hand-checked table, LiteLLM's map, a prices file, hand-given flags) and warns
when its date is more than ``PRICE_MAX_AGE_DAYS`` old.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from dynogen.compose import (
    counter_for,
    gated,
    open_sources,
    prompt_count,
    resolve_layout,
    resolve_price,
)
from dynogen.config import Config
from dynogen.engine import max_tokens as autosize
from dynogen.engine.calibration import Calibration
from dynogen.execute.prices import PRICE_MAX_AGE_DAYS, Price, price_age_days
from dynogen.prompts.builder import PromptBuilder, render_metadata
from dynogen.prompts.tokens import TokenCounter
from dynogen.tasks.judge import INSTANCE_CHARS, JUDGE_MAX_TOKENS, judge_messages
from dynogen.tasks.task import Task
from dynogen.units import Skipped, Unit, skip_reason

__all__ = ["Estimate", "cacheable_prefix", "estimate", "estimate_units", "format_estimate"]

JUDGE_TASKS_EXPECTED = 1.0  # kept tasks per answer, measured on the corpus against the fake
JUDGE_EXPECTED_OUTPUT = 48  # {"reason": one sentence, "output_from_inputs": …, "valid": …}
LOW_FRACTION = 0.4
CACHE_MIN_TOKENS = 1024
CACHE_STEP = 128


def cacheable_prefix(prefix_tokens: int) -> int:
    """Tokens of a shared prefix a provider bills at the cached price (OpenAI's rule)."""
    if prefix_tokens < CACHE_MIN_TOKENS:
        return 0
    return (prefix_tokens // CACHE_STEP) * CACHE_STEP


@dataclass
class Estimate:
    model: str
    units: int
    units_skipped: dict[str, int]
    requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: dict[str, int]
    cost_usd: dict[str, dict[str, float]]
    minutes_at_limits: float | None
    calibration: str
    prefix_tokens: dict[str, int]
    judge: dict[str, int] | None = None
    price: Price | None = None
    # the tokenizer that counted the prompts, when it is not the model's own (a model
    # priced by LiteLLM's map names none): its counts are then an approximation
    approx_encoding: str | None = None
    # the prompt layout an online and a batch run would send, and their prompt tokens
    # (``input_tokens`` and ``cached_input_tokens`` are of the online layout's prompts
    # unless the config asks for batch mode)
    prompt_layout: dict[str, str] | None = None
    input_tokens_by_mode: dict[str, int] | None = None

    @property
    def cached_share(self) -> float:
        """The share of the online prompts' tokens expected at the cached price."""
        online = (self.input_tokens_by_mode or {}).get("online", self.input_tokens)
        return self.cached_input_tokens / online if online else 0.0

    def to_dict(self) -> dict[str, Any]:
        exp = self.cost_usd["expected"]
        return {
            "model": self.model,
            "units": self.units,
            "units_skipped": self.units_skipped,
            "units_left_out_by_policy": {k: v for k, v in self.units_skipped.items()
                                         if k.startswith(_POLICY_PREFIXES)},
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cached_share": round(self.cached_share, 4),
            "prompt_layout": self.prompt_layout,
            "input_tokens_by_mode": self.input_tokens_by_mode,
            "output_tokens": self.output_tokens,
            "cost_usd": {"online": exp["online"], "batch": exp["batch"],
                         "by_output": self.cost_usd},
            "minutes_at_limits": self.minutes_at_limits,
            "calibration": self.calibration,
            "prefix_tokens": self.prefix_tokens,
            "judge": self.judge,
            "price_source": self.price.describe() if self.price is not None else None,
            "price": self.price.to_dict() if self.price is not None else None,
            "approx_encoding": self.approx_encoding,
        }


def estimate_units(cfg: Config, source: Iterable[Unit | Skipped], price: Price,
                   counter: TokenCounter, calibration: Calibration, *,
                   layouts: dict[str, str] | None = None,
                   count: Callable[[int, dict[str, Any]], int] | None = None) -> Estimate:
    """``layouts``: the prompt layout each mode would send (``{"online": ..., "batch":
    ...}``, see ``compose.resolve_layout``); by default ``cfg.prompt_layout`` for both.
    Online costs are of the online layout's prompts, Batch costs of the batch one's.
    ``count`` turns dynogen's count of a prompt into the provider's (``prompt_count``)."""
    layouts = layouts or {"online": cfg.prompt_layout, "batch": cfg.prompt_layout}
    pbs = {mode: PromptBuilder(cfg.with_(prompt_layout=layout), counter)
           for mode, layout in layouts.items()}
    if layouts["batch"] == layouts["online"]:
        pbs["batch"] = pbs["online"]
    own = "batch" if cfg.mode == "batch" else "online"  # what the run itself sends
    pb = pbs[own]
    units = requests = input_tokens = cached = worst_tpm_tokens = max_out = 0
    mode_in = {"online": 0, "batch": 0}
    skipped: Counter[str] = Counter()
    prefix = {v: pb.prefix_tokens(v) for v in cfg.variants}
    # OpenAI places a json_schema before the system message: under the per-unit layout
    # (the unit's field names as enums) no two units share a cacheable prefix; under the
    # shared one, the schema, the system prompt and the few-shot turns are cached. Batch
    # lines are billed at batch prices with no cache discount (``Price.cost``).
    online = pbs["online"]
    cache_share = {v: cacheable_prefix(online.shared_prefix_tokens(v))
                   if price.supports_prompt_cache else 0 for v in cfg.variants}
    # one prefix per variant, or one for both (the shared layout's)
    cache_prefix = {v: id(online.prefix_messages(v)) for v in cfg.variants}
    written: set[int] = set()
    seen: set[str] = set()
    judge_in = {"expected": 0, "high": 0}
    judge_n = {"expected": 0.0, "high": 0}
    for item in source:
        if item.key in seen:
            skipped["duplicate_unit"] += 1
            continue
        seen.add(item.key)
        if isinstance(item, Skipped):
            skipped[item.reason] += 1
            continue
        reason = skip_reason(item)
        if reason:
            skipped[reason] += 1
            continue
        units += 1
        for v in cfg.variants:
            user = pb.user_message(item, v)  # the same under every layout
            req = pb.request(item, v, user=user)
            requests += 1
            n_in = req.prompt_tokens if count is None else count(req.prompt_tokens, req.body)
            input_tokens += n_in
            worst_tpm_tokens += n_in + req.max_tokens
            max_out += req.max_tokens
            for mode, b in pbs.items():
                if b is pb:
                    mode_in[mode] += n_in
                else:
                    other = b.request(item, v, user=user)
                    mode_in[mode] += other.prompt_tokens if count is None else count(
                        other.prompt_tokens, other.body)
            # The first request of each shared prefix writes the cache; the rest read it.
            if cache_prefix[v] in written:
                cached += cache_share[v]
            written.add(cache_prefix[v])
        if cfg.judge:
            per = _judge_prompt_tokens(cfg, item, counter)
            n_exp = len(cfg.variants) * min(JUDGE_TASKS_EXPECTED, cfg.max_tasks_per_unit)
            n_high = len(cfg.variants) * cfg.max_tasks_per_unit
            judge_n["expected"] += n_exp
            judge_n["high"] += n_high
            judge_in["expected"] += round(per * n_exp)
            judge_in["high"] += per * n_high
    exp_out = round(calibration.mean_output_tokens * requests)
    outs = {"low": round(exp_out * LOW_FRACTION), "expected": exp_out,
            "high": max_out}  # what the requests' max_tokens allow (--max-tokens auto too)
    j_exp, j_high = round(judge_n["expected"]), int(judge_n["high"])
    judge_out = {"low": j_exp * JUDGE_EXPECTED_OUTPUT, "expected": j_exp * JUDGE_EXPECTED_OUTPUT,
                 "high": j_high * JUDGE_MAX_TOKENS}
    judge_tin = {"low": judge_in["expected"], "expected": judge_in["expected"],
                 "high": judge_in["high"]}
    # "high" is the most a run can be billed: every answer at max_tokens, nothing cached
    # (OpenAI caches best effort), as the budget reserves it.
    cost = {k: {"online": round(price.cost(mode_in["online"] + judge_tin[k],
                                           n + judge_out[k], 0 if k == "high" else cached), 6),
                "batch": round(price.cost(mode_in["batch"] + judge_tin[k], n + judge_out[k], 0,
                                          batch=True), 6)}
            for k, n in outs.items()}
    judge = None
    if cfg.judge:
        judge = {"requests_expected": j_exp, "requests_high": j_high,
                 "input_tokens_expected": judge_in["expected"],
                 "input_tokens_high": judge_in["high"]}
        requests += j_exp
        input_tokens += judge_in["expected"]
        worst_tpm_tokens += judge_in["high"] + j_high * JUDGE_MAX_TOKENS
    minutes = None
    if cfg.rpm or cfg.tpm:
        parts = []
        if cfg.rpm:
            parts.append(requests / cfg.rpm)
        if cfg.tpm:
            parts.append(worst_tpm_tokens / cfg.tpm)
        minutes = round(max(parts), 2)
    outs = {k: n + judge_out[k] for k, n in outs.items()}
    return Estimate(cfg.model, units, dict(sorted(skipped.items())), requests, input_tokens,
                    cached, outs, cost, minutes, calibration.source, prefix, judge, price,
                    None if price.encoding else counter.encoding, dict(layouts),
                    {"online": mode_in["online"], "batch": mode_in["batch"]})


def _judge_prompt_tokens(cfg: Config, unit: Unit, counter: TokenCounter) -> int:
    """One judge request's prompt for ``unit``: its metadata, a task of typical length and
    three examples cut from its sample rows (the most the judge shows)."""
    fields = tuple(f.name for f in unit.fields[:2])
    stub = Task("", unit.dataset, unit.config, "description",
                "Read the given input and produce the output field's value for it, "
                "following the dataset's conventions.", fields[:1], fields[-1])
    examples = [{"input": str(row)[:INSTANCE_CHARS], "output": str(row)[:INSTANCE_CHARS // 4]}
                for row in unit.samples[:3]]
    meta = render_metadata(dataset=unit.dataset, config=unit.config,
                           description=unit.description, fields=unit.fields, counter=counter,
                           budget=cfg.metadata_token_budget)
    return counter.count_messages(judge_messages(meta, stub, examples,
                                                 [f.name for f in unit.fields]))


_POLICY_PREFIXES = ("license_", "language_", "no_training_split", "rows_")


def _policy_line(skipped: dict[str, int]) -> str:
    """Units each data policy leaves out (licence, language, splits, unreadable rows)."""
    by = {k: v for k, v in skipped.items() if k.startswith(_POLICY_PREFIXES)}
    if not by:
        return "none"
    return f"{sum(by.values()):,} (" + ", ".join(f"{k} {v}" for k, v in by.items()) + ")"


def _layout_line(e: Estimate) -> str:
    """Which prompt layout each mode sends, and the share of online prompt tokens expected
    to be billed as cached (OpenAI caches best effort: an upper bound on the discount)."""
    lay = e.prompt_layout or {}
    by = e.input_tokens_by_mode or {}
    online = f"online {lay.get('online')} ({e.cached_share:.0%} of its tokens cached"
    online += ", expected)" if e.cached_input_tokens else ")"
    if lay.get("batch") == lay.get("online"):
        return f"prompt layout      {online}; batch the same, billed uncached"
    return (f"prompt layout      {online}; batch {lay.get('batch')} "
            f"({by.get('batch', 0):,} tokens, billed uncached)")


def format_estimate(e: Estimate, *, today: date | None = None) -> str:
    """A short human-readable table; ``today`` (default: the system's) dates the prices."""
    c = e.cost_usd
    lines = [
        f"model              {e.model}",
        *([f"price source       {e.price.describe()}"] if e.price is not None else []),
        f"units              {e.units:,} (skipped {sum(e.units_skipped.values()):,}: "
        + ", ".join(f"{k} {v}" for k, v in e.units_skipped.items()) + ")",
        f"left out by policy {_policy_line(e.units_skipped)}",
        f"requests           {e.requests:,}" + (
            f" (judge: {e.judge['requests_expected']:,} expected, up to "
            f"{e.judge['requests_high']:,})" if e.judge else ""),
        f"input tokens       {e.input_tokens:,} "
        + ("exact" if e.approx_encoding is None else
           f"counted with {e.approx_encoding}, not the model's own tokenizer")
        + f" ({e.cached_input_tokens:,} at cached price)",
        *([_layout_line(e)] if e.prompt_layout else []),
        f"output tokens      low {e.output_tokens['low']:,} / expected "
        f"{e.output_tokens['expected']:,} / high {e.output_tokens['high']:,}",
        f"cost online        ${c['low']['online']:.4f} / ${c['expected']['online']:.4f} / "
        f"${c['high']['online']:.4f}",
        f"cost batch API     ${c['low']['batch']:.4f} / ${c['expected']['batch']:.4f} / "
        f"${c['high']['batch']:.4f}",
        f"calibration        {e.calibration}",
    ]
    if e.minutes_at_limits is not None:
        m = e.minutes_at_limits
        lines.append(f"time at limits     {m:,.1f} min" + (f" ({m / 60:.1f} h)" if m > 90 else ""))
    if not math.isfinite(c["expected"]["online"]):
        lines.append("warning: cost is not finite")
    if e.price is not None:
        age = price_age_days(e.price, today)
        if age is not None and age > PRICE_MAX_AGE_DAYS:
            lines.append(f"warning: these prices were read {age} days ago ({e.price.date}, "
                         f"over {PRICE_MAX_AGE_DAYS}): providers change prices; check the "
                         "model's page, or pass --prices FILE or --price-in/--price-out")
    return "\n".join(lines)


def estimate(cfg: Config, *, calibration: str | Path | None = None,
             source: Iterable[Unit | Skipped] | None = None) -> Estimate:
    """Dry run: units, requests, exact prompt tokens, cost online and batch; no LLM call.

    Built from the same parts as a run (``dynogen.compose``): its price, tokenizer,
    ``--max-tokens auto`` figure, source and data policies.
    """
    cfg = cfg.validate()
    cal = Calibration.load(calibration)
    if cfg.max_tokens_auto and calibration is not None:
        # The figure a run with this calibration would use: its worst case is this one's.
        cfg, _ = autosize.plan(cfg.with_(calibration=str(calibration), out=""))
    price = resolve_price(cfg)
    # The layout each mode would pick (a dry run follows no run directory).
    layouts = {mode: resolve_layout(cfg.with_(mode=mode), price, follow_run=False).prompt_layout
               for mode in ("online", "batch")}
    cfg = cfg.with_(prompt_layout=layouts["batch" if cfg.mode == "batch" else "online"])
    src, _ = open_sources(cfg, source)
    return estimate_units(cfg, gated(cfg, src), price, counter_for(cfg, price), cal,
                          layouts=layouts, count=prompt_count(cfg))
