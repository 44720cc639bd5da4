"""What to list from the Hub and how politely: ``HubOptions``; and the skip reasons.

``HubOptions`` is plain and frozen; ``from_config`` reads the ``hub_*`` fields
of a ``Config`` (the ``--hub-*`` flags). ``datasets`` caps how many datasets are
*listed*, where ``--limit`` caps how many units reach the LLM.

>>> HubOptions(sort="downloads", datasets=100).effective_sort
'downloads'
>>> HubOptions(modified_since=parse_since("2026-11-01")).effective_sort
'last_modified'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dynogen.errors import ConfigError
from dynogen.io.folder import SAMPLE_ROWS
from dynogen.io.hub_http import DEFAULT_MAX_BODY
from dynogen.io.hub_viewer import DEFAULT_VIEWER_URL

__all__ = ["HUB_SORTS", "HubOptions", "HubSkip", "parse_since"]

HUB_SORTS = ("downloads", "last_modified")


class HubSkip:
    """Counted reasons for Hub datasets that are not turned into units."""

    GATED = "gated"
    PRIVATE = "private"
    DISABLED = "disabled"
    NOT_FOUND = "not_found"
    SCRIPT_ONLY = "script_only"
    VIEWER_INVALID = "viewer_invalid"
    HUB_ERROR = "hub_error"
    TOO_LARGE = "body_too_large"
    TOO_MANY_CONFIGS = "too_many_configs"
    NOT_MODIFIED = "not_modified_since"


@dataclass(frozen=True, slots=True)
class HubOptions:
    """What to list and how politely. ``datasets`` caps the listing (``--limit`` caps units)."""

    search: str | None = None
    task_categories: tuple[str, ...] = ()
    filter: tuple[str, ...] = ()
    author: str | None = None
    modified_since: datetime | None = None  # an ISO string is accepted and parsed
    datasets: int | None = None
    sort: str | None = None
    rpm: float | None = 300.0
    concurrency: int = 8
    fetch_ahead: int = 32
    max_configs: int = 20
    sample_rows: int = SAMPLE_ROWS
    max_body: int = DEFAULT_MAX_BODY
    endpoint: str | None = None  # None: HF_ENDPOINT, else https://huggingface.co
    viewer_url: str = DEFAULT_VIEWER_URL
    near_copies: bool = True

    def __post_init__(self) -> None:
        if self.sort is not None and self.sort not in HUB_SORTS:
            raise ConfigError(f"--hub-sort must be one of {', '.join(HUB_SORTS)} (got {self.sort})")
        for name in ("concurrency", "fetch_ahead", "max_configs", "max_body"):
            if getattr(self, name) < 1:
                raise ConfigError(f"hub {name} must be at least 1")
        if self.datasets is not None and self.datasets < 0:
            raise ConfigError("--hub-datasets must be 0 or more")
        if self.sample_rows < 0:
            raise ConfigError("hub sample rows must be 0 or more")
        since: Any = self.modified_since
        if since is not None:  # an ISO string or a naive time is read as UTC
            object.__setattr__(self, "modified_since", parse_since(since))

    @property
    def effective_sort(self) -> str | None:
        return self.sort or ("last_modified" if self.modified_since else None)

    @classmethod
    def from_config(cls, cfg: Any) -> HubOptions:
        """The ``hub_*`` fields of a ``Config``."""
        return cls(
            search=cfg.hub_search,
            task_categories=tuple(cfg.hub_task_categories),
            modified_since=parse_since(cfg.hub_modified_since),
            datasets=cfg.hub_datasets,
            sort=cfg.hub_sort,
            rpm=cfg.hub_rpm,
            concurrency=cfg.hub_concurrency,
            viewer_url=cfg.hub_viewer_url,
        )


def parse_since(value: str | datetime | None) -> datetime | None:
    """An ISO date or time (``2026-11-01``, ``2026-11-01T12:00:00Z``) as an aware datetime."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--hub-modified-since {value!r} is not an ISO date: use 2026-11-01 or "
            "2026-11-01T12:00:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
