"""LiteLLM's model price map, as dynogen vendors it: prices for models of any provider.

``dynogen/data/litellm/model_prices.json`` is a trimmed copy of LiteLLM's
``model_prices_and_context_window.json`` (MIT, see the ``NOTICE`` beside it),
rebuilt by ``scripts/refresh_prices.py``, which records the litellm wheel, the
sha256 of the original file and the date in its ``_source``. One row per map
key, in dollars per 1M tokens: input, output, cache read, cache write, Batch
input, output and cache write, the mode (chat, completion, embedding) and
LiteLLM's provider.

The map is the lowest layer of ``dynogen.execute.prices``: its hand-checked
table, a user's prices file and hand-given prices all win over it. Keys are
matched exactly. The same model often appears under several providers
(``claude-sonnet-4-5``, ``vertex_ai/claude-sonnet-4-5``,
``openrouter/anthropic/claude-sonnet-4.5``...); ``candidates`` lists the keys a
bare name could mean, and the caller asks the user to pick one (``--price-key``)
rather than guess a provider from the name.

The file is read once per process, on the first model the hand-checked table
does not know (about 10 ms for 3,500 rows), never at import.

>>> m = PriceMap.load()
>>> m.row("claude-sonnet-4-5")["cache_write"]
3.75
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from dynogen.errors import ConfigError

__all__ = ["FORMAT", "VENDORED", "PriceMap"]

FORMAT = 1  # the layout scripts/refresh_prices.py writes
VENDORED = "data/litellm/model_prices.json"  # inside the dynogen package
_PRICE_COLUMNS = ("input", "output", "cached_input", "cache_write", "batch_input",
                  "batch_output", "batch_cache_write")
_COLUMNS = (*_PRICE_COLUMNS, "mode", "provider")


class PriceMap:
    """Map key -> a price row (the shape of a prices-file row, see ``row``).

    >>> m = PriceMap({"format": 1, "columns": [...], "models": {...}}, where="mine.json")
    >>> m.candidates("deepseek-chat")       # keys that end in "/deepseek-chat"
    """

    __slots__ = ("_models", "_index", "where", "version", "date", "sha256")

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        if data.get("format") != FORMAT or tuple(data.get("columns") or ()) != _COLUMNS:
            raise ConfigError(f"{where}: not a price map dynogen reads (format {FORMAT}, "
                              f"columns {', '.join(_COLUMNS)}); rebuild it with "
                              "scripts/refresh_prices.py")
        models = data.get("models")
        if not isinstance(models, dict):
            raise ConfigError(f"{where}: 'models' must map keys to rows")
        source = data.get("_source") or {}
        self._models: dict[str, list[Any]] = models
        self._index: dict[str, list[str]] | None = None
        self.where = where
        self.version = str(source.get("version") or source.get("file") or "unknown")
        self.date = str(source.get("date") or "")
        self.sha256 = str(source.get("sha256") or "")

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceMap:
        """The vendored map (``path`` None) or another file of the same layout; read once
        per path and process."""
        return _load(str(path) if path is not None else None)

    def __contains__(self, key: object) -> bool:
        return key in self._models

    def __len__(self) -> int:
        return len(self._models)

    @property
    def source(self) -> str:
        return f"LiteLLM {self.version}"

    def row(self, key: str) -> dict[str, Any] | None:
        """The row under exactly ``key``, as a prices-file row dynogen validates."""
        cells = self._models.get(key)
        if cells is None:
            return None
        if not isinstance(cells, list) or len(cells) != len(_COLUMNS):
            raise ConfigError(f"{self.where}: the row of {key!r} is not {len(_COLUMNS)} cells")
        row = dict(zip(_COLUMNS, cells, strict=True))
        cached = row["cached_input"]
        return {
            "input": row["input"],
            "output": row["output"],
            "cached_input": cached,
            "supports_prompt_cache": cached is not None,
            "cache_write": row["cache_write"],
            "batch_input": row["batch_input"],
            "batch_output": row["batch_output"],
            "batch_cache_write": row["batch_cache_write"],
            # LiteLLM names no tokenizer: the run's --encoding counts the prompt.
            "encoding": "",
            "mode": row["mode"],
            "provider": row["provider"],
            "origin": "litellm",
            "key": key,
            "source": self.source,
            "date": self.date,
        }

    def candidates(self, name: str) -> list[str]:
        """Keys under which a provider serves ``name``: those ending in ``/name``."""
        if self._index is None:
            index: dict[str, list[str]] = {}
            for key in self._models:
                parts = key.split("/")
                for i in range(1, len(parts)):
                    index.setdefault("/".join(parts[i:]), []).append(key)
            self._index = index
        return sorted(self._index.get(name, ()))


@functools.lru_cache(maxsize=4)
def _load(path: str | None) -> PriceMap:
    if path is None:
        where = f"dynogen/{VENDORED}"
        text = resources.files("dynogen").joinpath(VENDORED).read_text("utf-8")
    else:
        where = path
        try:
            text = Path(path).read_text("utf-8")
        except OSError as e:
            raise ConfigError(f"price map {path} cannot be read: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"price map {where} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"price map {where} must be a JSON object")
    return PriceMap(data, where)
