"""What a model costs, and the one place a model name becomes a price.

A run has a hard ``--budget-usd``, so an unknown model must never be priced at
$0 by accident: ``price_for`` raises ``UnknownPriceError`` unless the user gives
``--price-in``/``--price-out``, a prices file, or says ``--free`` (a local
server). Names are matched exactly, then with a dated-snapshot suffix removed
(``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``, ``gpt-4-0613`` -> ``gpt-4``);
never by partial names beyond that, so ``gpt-4o-mini-foo`` is unknown.

Money is counted in integer pico-dollars (1e-12 USD) per token inside
``Price`` so the ledger's sums are exact: prices are per 1M tokens, so a price
of $0.075/1M is exactly 75,000 pico-dollars per token.

The built-in table is ``dynogen/data/prices.json``; a user file (TOML or JSON)
has the same shape and adds models or changes fields of existing ones::

    [models."my-finetune"]
    input = 0.30
    output = 1.20

    [models."gpt-4o-mini"]
    input = 0.10          # only this field changes
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from dynogen.errors import ConfigError, UnknownPriceError
from dynogen.prompts.tokens import DEFAULT_ENCODING, KNOWN_ENCODINGS

__all__ = ["PICO", "Price", "PriceTable", "price_for", "snapshot_base"]

PICO = 10**12  # pico-dollars per dollar
_PER_MILLION_TO_PICO_PER_TOKEN = 6  # $/1M tokens * 1e6 = pico-dollars per token

_PRICE_FIELDS = ("input", "cached_input", "output", "batch_input", "batch_output")
_ROW_FIELDS = frozenset(
    (*_PRICE_FIELDS, "supports_prompt_cache", "encoding", "source", "date", "note")
)
# -YYYY-MM-DD (gpt-4o-mini-2024-07-18) or -MMDD (gpt-4-0613): OpenAI's snapshot suffixes.
_SNAPSHOT = re.compile(
    r"-(?:20\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])|(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))$"
)


def _pico_per_token(per_million: float) -> int:
    """Dollars per 1M tokens -> pico-dollars per token, rounded up (never under-bill)."""
    d = Decimal(repr(per_million)).scaleb(_PER_MILLION_TO_PICO_PER_TOKEN)
    return int(d.to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True, slots=True)
class Price:
    """Prices of one model in USD per 1M tokens.

    >>> p = Price(input=0.15, cached_input=0.075, output=0.60, batch_input=0.075,
    ...           batch_output=0.30, supports_prompt_cache=True)
    >>> round(p.cost(1_000_000, 0), 6), round(p.cost(1_000_000, 0, cached_tokens=1_000_000), 6)
    (0.15, 0.075)

    ``cost`` bills cached prompt tokens at ``cached_input`` only when the model
    supports prompt caching. With ``batch=True`` every prompt token is billed at
    ``batch_input``: the cache discount is not assumed to stack with the Batch
    discount, which can only over-estimate.
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
    # integer pico-dollars per token, derived once
    _p_in: int = field(init=False, repr=False, compare=False)
    _p_cached: int = field(init=False, repr=False, compare=False)
    _p_out: int = field(init=False, repr=False, compare=False)
    _p_bin: int = field(init=False, repr=False, compare=False)
    _p_bout: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in _PRICE_FIELDS:
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v < 0
            ):
                raise ConfigError(
                    f"price {name} must be a non-negative number of dollars per 1M tokens "
                    f"(got {v!r})"
                )
        object.__setattr__(self, "_p_in", _pico_per_token(self.input))
        object.__setattr__(self, "_p_cached", _pico_per_token(self.cached_input))
        object.__setattr__(self, "_p_out", _pico_per_token(self.output))
        object.__setattr__(self, "_p_bin", _pico_per_token(self.batch_input))
        object.__setattr__(self, "_p_bout", _pico_per_token(self.batch_output))

    @classmethod
    def free(cls, encoding: str = DEFAULT_ENCODING) -> Price:
        """An explicit zero price, for a local server the user runs themselves."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, False, encoding, source="--free", date="")

    @property
    def is_free(self) -> bool:
        return not (self._p_in or self._p_cached or self._p_out or self._p_bin or self._p_bout)

    def cost_pico(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        batch: bool = False,
    ) -> int:
        if batch:
            return prompt_tokens * self._p_bin + completion_tokens * self._p_bout
        if self.supports_prompt_cache and cached_tokens > 0:
            cached = min(cached_tokens, prompt_tokens)
            return (
                (prompt_tokens - cached) * self._p_in
                + cached * self._p_cached
                + completion_tokens * self._p_out
            )
        return prompt_tokens * self._p_in + completion_tokens * self._p_out

    def worst_case_pico(self, prompt_tokens: int, max_tokens: int, batch: bool = False) -> int:
        """Upper bound on a request's cost: no cache discount, all of max_tokens generated."""
        if batch:
            return prompt_tokens * self._p_bin + max_tokens * self._p_bout
        return prompt_tokens * self._p_in + max_tokens * self._p_out

    def cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        batch: bool = False,
    ) -> float:
        """Dollars for one request's usage."""
        return self.cost_pico(prompt_tokens, completion_tokens, cached_tokens, batch) / PICO

    def worst_case(self, prompt_tokens: int, max_tokens: int, batch: bool = False) -> float:
        """Dollars a request can cost at most (if the server reports no more than asked)."""
        return self.worst_case_pico(prompt_tokens, max_tokens, batch) / PICO

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
        }


def snapshot_base(model: str) -> str | None:
    """``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``; ``None`` if not a dated snapshot."""
    base = _SNAPSHOT.sub("", model)
    return base if base != model and base else None


def _row_to_price(name: str, row: Mapping[str, Any], where: str) -> Price:
    unknown = sorted(set(row) - _ROW_FIELDS)
    if unknown:
        raise ConfigError(
            f"{where}: model {name!r} has unknown field(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_ROW_FIELDS))}"
        )
    missing = [k for k in ("input", "output") if row.get(k) is None]
    if missing:
        raise ConfigError(
            f"{where}: model {name!r} needs {' and '.join(missing)} (dollars per 1M tokens)"
        )
    inp, out = row["input"], row["output"]
    cache = bool(row.get("supports_prompt_cache", False))
    cached = row.get("cached_input")
    encoding = row.get("encoding") or DEFAULT_ENCODING
    if encoding not in KNOWN_ENCODINGS:
        raise ConfigError(
            f"{where}: model {name!r} has unknown encoding {encoding!r}; "
            f"use one of {', '.join(KNOWN_ENCODINGS)}"
        )
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
    )


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
    """Model name -> ``Price``, from the built-in table plus the user's changes.

    >>> table = PriceTable.load()
    >>> table.lookup("gpt-4o-mini-2024-07-18").input
    0.15
    """

    __slots__ = ("_rows", "_prices")

    def __init__(self, rows: Mapping[str, Mapping[str, Any]], where: str = "prices") -> None:
        self._rows = {name: dict(row) for name, row in rows.items()}
        self._prices = {name: _row_to_price(name, row, where) for name, row in self._rows.items()}

    @classmethod
    def builtin_rows(cls) -> dict[str, dict[str, Any]]:
        text = resources.files("dynogen").joinpath("data/prices.json").read_text("utf-8")
        return _models_of(json.loads(text), "dynogen/data/prices.json")

    @classmethod
    def load(
        cls,
        user_file: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> PriceTable:
        """Built-in prices, then ``user_file`` (TOML or JSON), then ``overrides``.

        A later source changes only the fields it names for a known model; a new
        model needs at least ``input`` and ``output``.
        """
        rows = cls.builtin_rows()
        layers: list[tuple[str, Mapping[str, Any]]] = []
        if user_file is not None:
            p = Path(user_file)
            layers.append((str(p), _read_user_file(p)))
        if overrides:
            layers.append(("price overrides", overrides))
        for where, data in layers:
            for name, row in _models_of(data, where).items():
                merged = {**rows.get(name, {}), **row}
                # The row now comes (at least partly) from this layer: say so.
                merged["source"] = row.get("source", where)
                merged["date"] = row.get("date", "")
                rows[name] = merged
                _row_to_price(
                    name, merged, where
                )  # report errors against the file that caused them
        return cls(rows)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.find(model) is not None

    def __len__(self) -> int:
        return len(self._prices)

    def models(self) -> list[str]:
        return sorted(self._prices)

    def find(self, model: str) -> Price | None:
        """Exact name, else the name without a dated-snapshot suffix, else ``None``."""
        price = self._prices.get(model)
        if price is None:
            base = snapshot_base(model)
            if base is not None:
                price = self._prices.get(base)
        return price

    def lookup(self, model: str) -> Price:
        price = self.find(model)
        if price is None:
            raise UnknownPriceError(_unknown_message(model))
        return price


def _unknown_message(model: str) -> str:
    return (
        f"no price for model {model!r}: pass --price-in and --price-out (dollars per million "
        "tokens), add it to a prices file, or --free for a local server"
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
) -> Price:
    """The price a run bills at; never a silent $0.

    ``--price-in/--price-out`` win over the table (with no cache discount
    assumed; Batch prices are half of them, OpenAI's Batch discount, unless
    ``batch_price_in``/``batch_price_out`` say otherwise); ``--free`` is an
    explicit zero for local servers.
    """
    known = table.find(model)
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
        )
    if known is None:
        raise UnknownPriceError(_unknown_message(model))
    return known
