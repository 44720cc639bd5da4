"""Metadata sources: where units (one dataset configuration each) come from.

Every source is an iterable of ``Unit | Skipped`` with a ``describe()`` line;
``open_source(spec)`` picks one from a ``--source`` string.
"""

from dynogen.io.cards import CardError, build_units, card_license, card_summary, split_card
from dynogen.io.folder import FolderSource, read_rows
from dynogen.io.hub import HubApi, HubSource, HubStats
from dynogen.io.hub_options import HubOptions, HubSkip, parse_since
from dynogen.io.nearcopy import NEAR_COPY, NearCopies, skip_near_copies
from dynogen.io.shards import CollectStats, JsonlSource, ShardWriter, collect
from dynogen.io.sources import LimitedSource, Source, open_source, samples_dir, source_for

__all__ = [
    "CardError",
    "CollectStats",
    "FolderSource",
    "HubApi",
    "HubOptions",
    "HubSkip",
    "HubSource",
    "HubStats",
    "NEAR_COPY",
    "NearCopies",
    "JsonlSource",
    "LimitedSource",
    "ShardWriter",
    "Source",
    "build_units",
    "card_license",
    "card_summary",
    "collect",
    "open_source",
    "parse_since",
    "read_rows",
    "samples_dir",
    "skip_near_copies",
    "source_for",
    "split_card",
]
