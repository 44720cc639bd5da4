"""The dataset viewer's API: features and a few rows without downloading data files.

The viewer (datasets-server) has already opened every dataset it can:
``/is-valid`` says whether a preview exists, ``/info`` gives each config's
``datasets`` features, splits, description and license (the same shape as a
legacy ``dataset_infos.json``, so ``cards.build_units`` reads it as is), and
``/first-rows`` gives up to 100 rows of a split. Three small JSON answers
replace downloading a dataset's data files.

Parsing is pure (``infos_from_info``, ``rows_from_first_rows``...); ``Viewer``
only adds the three GETs through ``HubHttp``. ``viewer_skip`` maps a viewer
error to a counted skip reason.

>>> infos_from_info({"dataset_info": {"cola": {"features": {}, "splits": {"train": {}}}}})
{'cola': {'features': {}, 'splits': {'train': {}}}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dynogen.io.hub_http import HubHttp, HubHTTPError

__all__ = [
    "DEFAULT_VIEWER_URL",
    "Viewer",
    "infos_from_info",
    "pick_split",
    "preview_ok",
    "rows_from_first_rows",
    "viewer_skip",
]

DEFAULT_VIEWER_URL = "https://datasets-server.huggingface.co"
_SPLIT_PREFERENCE = ("train", "validation", "test")


def preview_ok(answer: Any) -> bool:
    """Whether ``/is-valid`` says ``/first-rows`` works (``preview``; ``viewer`` implies it)."""
    return isinstance(answer, Mapping) and bool(answer.get("preview") or answer.get("viewer"))


def infos_from_info(answer: Any) -> dict[str, Any]:
    """``{config: {features, splits, description, license}}`` from an ``/info`` answer.

    ``dataset_info`` is keyed by config for a dataset-wide request; a
    config-level answer (one object with ``config_name``) is keyed here by it.
    """
    info = answer.get("dataset_info") if isinstance(answer, Mapping) else None
    if not isinstance(info, Mapping):
        raise ValueError("the /info answer has no dataset_info object")
    if "features" in info and isinstance(info.get("config_name"), str):
        return {str(info["config_name"]): dict(info)}
    return {str(k): v for k, v in info.items()}


def pick_split(splits: Sequence[str]) -> str | None:
    """The split to preview: train, else validation, else test, else the first listed."""
    for name in _SPLIT_PREFERENCE:
        if name in splits:
            return name
    return splits[0] if splits else None


def rows_from_first_rows(answer: Any, n: int) -> tuple[dict[str, Any], ...]:
    """The first ``n`` rows of a ``/first-rows`` answer (each ``{"row": {...}}``)."""
    rows = answer.get("rows") if isinstance(answer, Mapping) else None
    if not isinstance(rows, list):
        raise ValueError("the /first-rows answer has no rows list")
    out: list[dict[str, Any]] = []
    for item in rows[:n]:
        row = item.get("row") if isinstance(item, Mapping) else None
        if isinstance(row, Mapping):
            out.append(dict(row))
    return tuple(out)


def viewer_skip(err: HubHTTPError) -> tuple[str, str]:
    """``(reason, detail)`` for a viewer error: script-only, gated/private, or viewer-invalid.

    The viewer answers 401/404 alike for private, gated and missing datasets; a
    ``*Script*`` error code means the dataset is a loading script it will not run.
    Any other refusal is the viewer not handling this dataset (``viewer_invalid``),
    except 5xx answers without an error code, which are outages (``hub_error``).
    """
    detail = str(err)
    if "script" in err.code.lower():
        return "script_only", detail
    if err.status in (401, 403, 404):
        return "viewer_invalid", detail
    if (err.status >= 500 and not err.code) or err.status == 0:
        return "hub_error", detail
    return "viewer_invalid", detail


class Viewer:
    """The three viewer endpoints at ``base_url`` (default: the public datasets-server)."""

    def __init__(self, http: HubHttp, base_url: str = DEFAULT_VIEWER_URL) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")

    async def is_valid(self, dataset: str) -> bool:
        answer = await self.http.get(f"{self.base_url}/is-valid", {"dataset": dataset},
                                     what="viewer /is-valid")
        return preview_ok(answer.json())

    async def info(self, dataset: str) -> dict[str, Any]:
        answer = await self.http.get(f"{self.base_url}/info", {"dataset": dataset},
                                     what="viewer /info")
        return infos_from_info(answer.json())

    async def first_rows(
        self, dataset: str, config: str, split: str, n: int
    ) -> tuple[dict[str, Any], ...]:
        answer = await self.http.get(
            f"{self.base_url}/first-rows", {"dataset": dataset, "config": config, "split": split},
            what="viewer /first-rows",
        )
        return rows_from_first_rows(answer.json(), n)
