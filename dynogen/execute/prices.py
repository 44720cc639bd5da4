"""What a model costs, and the one place a model name becomes a price.

A run has a hard ``--budget-usd``, so an unknown model must never be priced at
$0 by accident: ``price_for`` raises ``UnknownPriceError`` unless some layer
below prices it, the user gives ``--price-in``/``--price-out``, or says
``--free`` (a local server).

Where a price comes from, highest first (``Price.origin`` and
``Price.describe()`` say which one priced a run; ``estimate`` prints it):

1. ``--price-in``/``--price-out`` (``price_in``/``price_out``): by hand, for
   everything; ``--free`` is an explicit zero.
2. A user's prices file (``--prices FILE``, config key ``prices_file``; TOML
   or JSON): its rows replace whole models, or change only the fields they
   name of a model a lower layer knows.
3. dynogen's hand-checked table, ``dynogen/data/prices.json``: OpenAI models
   whose prices were read off OpenAI's pages, each with its source and date.
4. LiteLLM's price map, vendored (``dynogen.execute.price_map``): thousands of
   models of every provider, dated by its refresh.

Names are matched exactly. In layers 2 and 3 a dated-snapshot suffix may be
removed too (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``, ``gpt-4-0613`` ->
``gpt-4``), never anything more, so ``gpt-4o-mini-foo`` is unknown. LiteLLM's
map is matched by exact key only: where a name is not a key but several
providers' keys end in it (``deepseek-r1`` -> ``openrouter/deepseek/deepseek-r1``,
``together_ai/deepseek-ai/...``), the error lists them and ``--price-key``
(``price_key``) names the one to bill; it also picks a key when the model's
own name is a key of the wrong provider. No provider is guessed from a name.

Money is counted in integer pico-dollars (1e-12 USD) per token inside
``Price`` so the ledger's sums are exact: prices are per 1M tokens, so a price
of $0.075/1M is exactly 75,000 pico-dollars per token.

A user file has the shape of the built-in table and adds models or changes
fields of known ones (a model of LiteLLM's map too)::

    [models."my-finetune"]
    input = 0.30
    output = 1.20

    [models."gpt-4o-mini"]
    input = 0.10          # only this field changes

    [models."claude-sonnet-4-5"]
    cache_write = 3.75    # $ per 1M prompt tokens written to the prompt cache
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date as Date
from decimal import ROUND_CEILING, Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from dynogen.errors import ConfigError, UnknownPriceError
from dynogen.execute.price_map import PriceMap
from dynogen.prompts.tokens import DEFAULT_ENCODING, KNOWN_ENCODINGS

__all__ = ["PICO", "PRICE_MAX_AGE_DAYS", "Price", "PriceTable", "price_age_days", "price_for",
           "snapshot_base"]

PICO = 10**12  # pico-dollars per dollar
_PER_MILLION_TO_PICO_PER_TOKEN = 6  # $/1M tokens * 1e6 = pico-dollars per token
# Prices older than this are flagged by ``estimate``: providers change them.
PRICE_MAX_AGE_DAYS = 180

_PRICE_FIELDS = ("input", "cached_input", "output", "batch_input", "batch_output")
_OPTIONAL_PRICES = ("cache_write", "batch_cache_write")
_ROW_FIELDS = frozenset((
    *_PRICE_FIELDS, *_OPTIONAL_PRICES, "supports_prompt_cache", "encoding", "source", "date",
    "note", "origin", "key", "provider", "mode"))
# -YYYY-MM-DD (gpt-4o-mini-2024-07-18) or -MMDD (gpt-4-0613): OpenAI's snapshot suffixes.
_SNAPSHOT = re.compile(
    r"-(?:20\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])|(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))$"
)
_SHOW_CANDIDATES = 12


def _pico_per_token(per_million: float) -> int:
    """Dollars per 1M tokens -> pico-dollars per token, rounded up (never under-bill)."""
    d = Decimal(repr(per_million)).scaleb(_PER_MILLION_TO_PICO_PER_TOKEN)
    return int(d.to_integral_value(rounding=ROUND_CEILING))


def _check_price(name: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ConfigError(
            f"price {name} must be a non-negative number of dollars per 1M tokens (got {v!r})"
        )


@dataclass(frozen=True, slots=True)
class Price:
    """Prices of one model in USD per 1M tokens, and where they come from.

    >>> p = Price(input=0.15, cached_input=0.075, output=0.60, batch_input=0.075,
    ...           batch_output=0.30, supports_prompt_cache=True)
    >>> round(p.cost(1_000_000, 0), 6), round(p.cost(1_000_000, 0, cached_tokens=1_000_000), 6)
    (0.15, 0.075)

    ``cost`` bills cached prompt tokens (a cache read) at ``cached_input`` only
    when the model supports prompt caching, and prompt tokens written to the
    cache (Anthropic's ``cache_creation_input_tokens``) at ``cache_write``
    (``None``: at ``input``); both are counted inside ``prompt_tokens``, as
    OpenAI counts ``cached_tokens``. With ``batch=True`` every other prompt token
    is billed at ``batch_input``: the cache discount is not assumed to stack with
    the Batch discount, which can only over-estimate; written tokens are billed at
    ``batch_cache_write``, else ``cache_write`` (an upper bound). A price that
    names ``batch_cache_write`` says its provider's cache discounts apply inside
    batches (Anthropic's do): its cache reads in a batch are billed at
    ``cached_input`` scaled by the Batch discount (``batch_input / input``).

    ``origin`` says which layer priced it (``hand-checked``, ``litellm``,
    ``file``, ``overrides``, ``flags``, ``free``; see the module docstring),
    ``key`` under which name, ``provider`` LiteLLM's provider of that key,
    ``source`` the page, file or release, ``date`` when it was read.
    """

    input: float
    cached_input: float
    output: float
    batch_input: float
    batch_output: float
    supports_prompt_cache: bool = False
    encoding: str = DEFAULT_ENCODING
    source: str = ""
    date: str = ""
    cache_write: float | None = None
    batch_cache_write: float | None = None
    origin: str = ""
    key: str = ""
    provider: str = ""
    # integer pico-dollars per token, derived once
    _p_in: int = field(init=False, repr=False, compare=False)
    _p_cached: int = field(init=False, repr=False, compare=False)
    _p_out: int = field(init=False, repr=False, compare=False)
    _p_bin: int = field(init=False, repr=False, compare=False)
    _p_bout: int = field(init=False, repr=False, compare=False)
    _p_write: int = field(init=False, repr=False, compare=False)
    _p_bwrite: int = field(init=False, repr=False, compare=False)
    _p_bcached: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in _PRICE_FIELDS:
            _check_price(name, getattr(self, name))
        for name in _OPTIONAL_PRICES:
            if getattr(self, name) is not None:
                _check_price(name, getattr(self, name))
        object.__setattr__(self, "_p_in", _pico_per_token(self.input))
        object.__setattr__(self, "_p_cached", _pico_per_token(self.cached_input))
        object.__setattr__(self, "_p_out", _pico_per_token(self.output))
        object.__setattr__(self, "_p_bin", _pico_per_token(self.batch_input))
        object.__setattr__(self, "_p_bout", _pico_per_token(self.batch_output))
        write = None if self.cache_write is None else _pico_per_token(self.cache_write)
        bwrite = (write if self.batch_cache_write is None
                  else _pico_per_token(self.batch_cache_write))
        object.__setattr__(self, "_p_write", self._p_in if write is None else write)
        object.__setattr__(self, "_p_bwrite", self._p_bin if bwrite is None else bwrite)
        stacks = (self.batch_cache_write is not None and self.supports_prompt_cache
                  and self.input > 0)
        object.__setattr__(self, "_p_bcached", _pico_per_token(
            self.cached_input * self.batch_input / self.input) if stacks else None)

    @classmethod
    def free(cls, encoding: str = DEFAULT_ENCODING) -> Price:
        """An explicit zero price, for a local server the user runs themselves."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, False, encoding, source="--free", date="",
                   origin="free")

    @property
    def is_free(self) -> bool:
        return not (self._p_in or self._p_cached or self._p_out or self._p_bin or self._p_bout
                    or self._p_write or self._p_bwrite)

    def cost_pico(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        batch: bool = False,
        cache_write_tokens: int = 0,
    ) -> int:
        if cache_write_tokens > 0:
            return self._cost_with_writes(prompt_tokens, completion_tokens, cached_tokens,
                                          batch, cache_write_tokens)
        if batch:
            if self._p_bcached is not None and cached_tokens > 0:
                cached = min(cached_tokens, prompt_tokens)
                return ((prompt_tokens - cached) * self._p_bin + cached * self._p_bcached
                        + completion_tokens * self._p_bout)
            return prompt_tokens * self._p_bin + completion_tokens * self._p_bout
        if self.supports_prompt_cache and cached_tokens > 0:
            cached = min(cached_tokens, prompt_tokens)
            return (
                (prompt_tokens - cached) * self._p_in
                + cached * self._p_cached
                + completion_tokens * self._p_out
            )
        return prompt_tokens * self._p_in + completion_tokens * self._p_out

    def _cost_with_writes(self, prompt: int, completion: int, cached: int, batch: bool,
                          written: int) -> int:
        if batch:
            read = min(cached, prompt) if self._p_bcached is not None else 0
            written = min(written, prompt - read)
            return ((prompt - read - written) * self._p_bin + written * self._p_bwrite
                    + read * (self._p_bcached or 0) + completion * self._p_bout)
        cached = min(cached, prompt) if self.supports_prompt_cache and cached > 0 else 0
        written = min(written, prompt - cached)
        return ((prompt - cached - written) * self._p_in + cached * self._p_cached
                + written * self._p_write + completion * self._p_out)

    def worst_case_pico(self, prompt_tokens: int, max_tokens: int, batch: bool = False) -> int:
        """Upper bound on a request's cost: no cache discount, every prompt token written to
        the cache if that costs more, all of max_tokens generated."""
        if batch:
            return prompt_tokens * max(self._p_bin, self._p_bwrite) + max_tokens * self._p_bout
        return prompt_tokens * max(self._p_in, self._p_write) + max_tokens * self._p_out

    def cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        batch: bool = False,
        cache_write_tokens: int = 0,
    ) -> float:
        """Dollars for one request's usage."""
        return self.cost_pico(prompt_tokens, completion_tokens, cached_tokens, batch,
                              cache_write_tokens) / PICO

    def worst_case(self, prompt_tokens: int, max_tokens: int, batch: bool = False) -> float:
        """Dollars a request can cost at most (if the server reports no more than asked)."""
        return self.worst_case_pico(prompt_tokens, max_tokens, batch) / PICO

    def describe(self) -> str:
        """One line naming where this price comes from, for reports."""
        name = f" for {self.key}" if self.key else ""
        if self.origin == "hand-checked":
            return f"dynogen's hand-checked table{name} ({self.source}, read {self.date})"
        if self.origin == "litellm":
            provider = f", provider {self.provider}" if self.provider else ""
            return f"LiteLLM's price map{name}{provider} ({self.source}, vendored {self.date})"
        if self.origin in ("file", "overrides"):
            dated = f", dated {self.date}" if self.date else ""
            return f"prices file {self.source}{name}{dated}" if self.origin == "file" \
                else f"price overrides{name}{dated}"
        if self.origin == "flags":
            return "--price-in/--price-out, given by hand"
        if self.origin == "free":
            return "--free: no charge"
        return self.source or "given in code"

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "cached_input": self.cached_input,
            "output": self.output,
            "batch_input": self.batch_input,
            "batch_output": self.batch_output,
            "supports_prompt_cache": self.supports_prompt_cache,
            "encoding": self.encoding,
            "source": self.source,
            "date": self.date,
            "cache_write": self.cache_write,
            "batch_cache_write": self.batch_cache_write,
            "origin": self.origin,
            "key": self.key,
            "provider": self.provider,
        }


def price_age_days(price: Price, today: Date | None = None) -> int | None:
    """Days since ``price.date`` (``None`` without a date): ``estimate`` warns past
    ``PRICE_MAX_AGE_DAYS``."""
    if not price.date:
        return None
    try:
        day = Date.fromisoformat(price.date)
    except ValueError:
        return None
    return ((today or Date.today()) - day).days


def snapshot_base(model: str) -> str | None:
    """``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``; ``None`` if not a dated snapshot."""
    base = _SNAPSHOT.sub("", model)
    return base if base != model and base else None


def _row_to_price(name: str, row: Mapping[str, Any], where: str) -> Price:
    unknown = sorted(set(row) - _ROW_FIELDS)
    if unknown:
        raise ConfigError(
            f"{where}: model {name!r} has unknown field(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_ROW_FIELDS - {'origin', 'key', 'provider', 'mode'}))}"
        )
    missing = [k for k in ("input", "output") if row.get(k) is None]
    if missing:
        raise ConfigError(
            f"{where}: model {name!r} needs {' and '.join(missing)} (dollars per 1M tokens)"
        )
    inp, out = row["input"], row["output"]
    cache = bool(row.get("supports_prompt_cache", False))
    cached = row.get("cached_input")
    encoding = row.get("encoding")
    encoding = DEFAULT_ENCODING if encoding is None else str(encoding)
    if encoding and encoding not in KNOWN_ENCODINGS:
        raise ConfigError(
            f"{where}: model {name!r} has unknown encoding {encoding!r}; "
            f"use one of {', '.join(KNOWN_ENCODINGS)}"
        )
    try:
        return Price(
            input=inp,
            # No cached price given: assume no discount rather than guess one.
            cached_input=cached if (cache and cached is not None) else inp,
            output=out,
            # No Batch price given: bill Batch at the standard price (an upper bound).
            batch_input=row["batch_input"] if row.get("batch_input") is not None else inp,
            batch_output=row["batch_output"] if row.get("batch_output") is not None else out,
            supports_prompt_cache=cache and cached is not None,
            encoding=encoding,
            source=str(row.get("source") or where),
            date=str(row.get("date") or ""),
            cache_write=row.get("cache_write"),
            batch_cache_write=row.get("batch_cache_write"),
            origin=str(row.get("origin") or ""),
            key=str(row.get("key") or name),
            provider=str(row.get("provider") or ""),
        )
    except ConfigError as e:
        raise ConfigError(f"{where}: model {name!r}: {e}") from None


def _models_of(data: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """Accept ``{"models": {...}}`` or a bare ``{name: row}`` mapping."""
    models = data.get("models", {k: v for k, v in data.items() if not k.startswith("_")})
    if not isinstance(models, Mapping):
        raise ConfigError(f"{where}: 'models' must be a table of model name -> prices")
    out: dict[str, dict[str, Any]] = {}
    for name, row in models.items():
        if not isinstance(row, Mapping):
            raise ConfigError(
                f"{where}: model {name!r} must be a table of prices, got {type(row).__name__}"
            )
        out[str(name)] = dict(row)
    return out


def _read_user_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"prices file {path} not found") from None
    except OSError as e:
        raise ConfigError(f"prices file {path} cannot be read: {e.strerror}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"prices file {path} is not valid JSON: {e}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(
                f"prices file {path} is not valid TOML (use .json for JSON): {e}"
            ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"prices file {path} must hold a table of models")
    return data


class PriceTable:
    """Model name -> ``Price``: the user's rows over the hand-checked table over LiteLLM's
    map (loaded only when a name is not in the first two).

    >>> table = PriceTable.load()
    >>> table.lookup("gpt-4o-mini-2024-07-18").input
    0.15
    >>> table.lookup("claude-sonnet-4-5").describe()
    "LiteLLM's price map for claude-sonnet-4-5, provider anthropic (LiteLLM 1.110.2, ...)"
    """

    __slots__ = ("_rows", "_prices", "_map_path", "_map")

    def __init__(self, rows: Mapping[str, Mapping[str, Any]], where: str = "prices", *,
                 price_map: str | Path | PriceMap | None = None) -> None:
        self._rows = {name: dict(row) for name, row in rows.items()}
        self._prices = {name: _row_to_price(name, row, where) for name, row in self._rows.items()}
        self._map = price_map if isinstance(price_map, PriceMap) else None
        self._map_path = None if isinstance(price_map, PriceMap) else price_map

    @classmethod
    def builtin_rows(cls) -> dict[str, dict[str, Any]]:
        """The hand-checked table, each row marked as such."""
        text = resources.files("dynogen").joinpath("data/prices.json").read_text("utf-8")
        rows = _models_of(json.loads(text), "dynogen/data/prices.json")
        return {name: {**row, "origin": "hand-checked", "key": name}
                for name, row in rows.items()}

    @classmethod
    def load(
        cls,
        user_file: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        *,
        price_map: str | Path | PriceMap | None = None,
    ) -> PriceTable:
        """Built-in prices, then ``user_file`` (TOML or JSON), then ``overrides``; LiteLLM's
        map (``price_map``, default the vendored one) below them all.

        A later source changes only the fields it names of a model a lower one knows
        (by its exact name); a new model needs at least ``input`` and ``output``.
        """
        table = cls(cls.builtin_rows(), price_map=price_map)
        rows = table._rows
        layers: list[tuple[str, str, Mapping[str, Any]]] = []
        if user_file is not None:
            p = Path(user_file)
            layers.append(("file", str(p), _read_user_file(p)))
        if overrides:
            layers.append(("overrides", "price overrides", overrides))
        for origin, where, data in layers:
            for name, row in _models_of(data, where).items():
                base = rows.get(name)
                if base is None:
                    base = table.price_map.row(name) or {}
                merged = {**base, **row}
                # The row now comes (at least partly) from this layer: say so.
                merged.update(origin=origin, key=name, source=row.get("source", where),
                              date=row.get("date", ""))
                rows[name] = merged
                # report errors against the file that caused them
                table._prices[name] = _row_to_price(name, merged, where)
        return table

    @property
    def price_map(self) -> PriceMap:
        """LiteLLM's map, read on first use."""
        if self._map is None:
            self._map = PriceMap.load(self._map_path)
        return self._map

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.find(model) is not None

    def __len__(self) -> int:
        return len(self._prices)

    def models(self) -> list[str]:
        """The names of the hand-checked table and the user's rows (not LiteLLM's map)."""
        return sorted(self._prices)

    def find(self, model: str) -> Price | None:
        """Exact name, else the name without a dated-snapshot suffix (hand-checked and
        user rows), else LiteLLM's exact key, else ``None``."""
        price = self._prices.get(model)
        if price is None:
            base = snapshot_base(model)
            if base is not None:
                price = self._prices.get(base)
        return price if price is not None else self.find_key(model)

    def find_key(self, key: str) -> Price | None:
        """Exactly ``key``: a row of the hand-checked table or the user's, else of the map."""
        price = self._prices.get(key)
        if price is None:
            row = self.price_map.row(key)
            if row is not None:
                price = _row_to_price(key, row, self.price_map.where)
        return price

    def lookup(self, model: str, price_key: str | None = None) -> Price:
        """``model``'s price (or exactly ``price_key``'s); ``UnknownPriceError`` says what to
        do when there is none, listing the map's keys a bare name could mean."""
        price = self.find(model) if price_key is None else self.find_key(price_key)
        if price is None:
            raise UnknownPriceError(self.unknown_message(model, price_key))
        return price

    def unknown_message(self, model: str, price_key: str | None = None) -> str:
        name = model if price_key is None else price_key
        keys = self.price_map.candidates(name)
        shown = ", ".join(keys[:_SHOW_CANDIDATES]) + (
            f" and {len(keys) - _SHOW_CANDIDATES} more" if len(keys) > _SHOW_CANDIDATES else "")
        if price_key is not None:
            head = (f"no price under --price-key {price_key!r}: it is no key of the hand-checked "
                    "table, the prices file or LiteLLM's price map (keys match exactly)")
            return head + (f"; keys ending in it: {shown}" if keys else "")
        if keys:
            return (f"no price for model {model!r}: it is no key of the price tables, but "
                    f"LiteLLM's price map has {len(keys)} provider key(s) for it: {shown}; "
                    "pass --price-key with the one you call (price_key in a config file), "
                    "or --price-in and --price-out")
        return (
            f"no price for model {model!r}: pass --price-in and --price-out (dollars per million "
            "tokens), add it to a prices file (--prices FILE), or --free for a local server"
        )


def price_for(
    model: str,
    table: PriceTable,
    *,
    price_in: float | None = None,
    price_out: float | None = None,
    free: bool = False,
    batch_price_in: float | None = None,
    batch_price_out: float | None = None,
    price_key: str | None = None,
) -> Price:
    """The price a run bills at; never a silent $0.

    ``--price-in/--price-out`` win over every table (with no cache discount
    assumed; Batch prices are half of them, OpenAI's Batch discount, unless
    ``batch_price_in``/``batch_price_out`` say otherwise); ``--free`` is an
    explicit zero for local servers; else ``table.lookup(model, price_key)``.
    """
    if free or price_in is not None or price_out is not None:
        known = table.find(model) if price_key is None else table.find_key(price_key)
        encoding = known.encoding if known is not None else DEFAULT_ENCODING
    if free:
        if price_in is not None or price_out is not None:
            raise ConfigError("--free cannot be combined with --price-in/--price-out")
        return Price.free(encoding)
    if (price_in is None) != (price_out is None):
        raise ConfigError("pass both --price-in and --price-out (dollars per million tokens)")
    if price_in is not None and price_out is not None:
        for flag, v in (("--price-in", price_in), ("--price-out", price_out)):
            if not math.isfinite(v) or v < 0:
                raise ConfigError(
                    f"{flag} must be a non-negative number of dollars per 1M tokens (got {v})"
                )
        return Price(
            input=price_in,
            cached_input=price_in,
            output=price_out,
            batch_input=price_in / 2 if batch_price_in is None else batch_price_in,
            batch_output=price_out / 2 if batch_price_out is None else batch_price_out,
            supports_prompt_cache=False,
            encoding=encoding,
            source="--price-in/--price-out",
            date="",
            origin="flags",
        )
    return table.lookup(model, price_key)
