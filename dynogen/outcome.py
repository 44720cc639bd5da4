"""What a command ends with: its exit code, output path, report and one-line message.

The one mapping from an error that ended a command to its exit code lives here,
below every command, so a grow step (a run) and the CLI read the same codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynogen.errors import APIConnectionError, ConfigError, FatalAPIError, StorageError

__all__ = ["EXIT", "RunOutcome", "exit_code", "load_dataset"]

EXIT = {"ok": 0, "error": 1, "budget": 3, "fatal": 4, "interrupted": 130}


def exit_code(err: BaseException | None) -> int:
    """The one mapping from an error that ended a command to its exit code."""
    if isinstance(err, StorageError):
        return EXIT["interrupted"]  # a full disk stops a run like Ctrl-C: resume later
    if isinstance(err, FatalAPIError | APIConnectionError):
        return EXIT["fatal"]
    return EXIT["error"]


@dataclass
class RunOutcome:
    """How a command ended, where its output is, and its report.

    >>> outcome = dynogen.run(cfg)
    >>> ds = outcome.dataset()          # the instances as a datasets.Dataset
    >>> tasks = outcome.dataset("tasks")
    """

    exit_code: int
    out: Path
    report: dict[str, Any]
    message: str
    stop_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def dataset(self, what: str = "instances") -> Any:
        """The run's instances (or ``"tasks"``) as a ``datasets.Dataset``."""
        return load_dataset(self.out, what)


def load_dataset(run_dir: str | Path, what: str = "instances") -> Any:
    """A run directory's instances (or ``tasks.jsonl``) as a ``datasets.Dataset``.

    Its ``instances.jsonl`` is read with ``datasets``' JSON reader into Arrow files
    under the run directory (``.hf-cache``); a sharded build's
    ``instances/part-*.parquet`` are read as they are. Either way a large output
    is memory-mapped, not held in memory.
    """
    if what not in ("instances", "tasks"):
        raise ConfigError(f"what must be instances or tasks (got {what!r})")
    run = Path(run_dir)
    path = run / f"{what}.jsonl"
    shards = _shards(run) if what == "instances" and not path.is_file() else []
    if not path.is_file() and not shards:
        hint = ("export the collection (dynogen export --collection) and load that"
                if (run / "collection.json").exists()
                else "run `dynogen run` (or `dynogen build`) first")
        where = f"{path} (or {run / 'instances'}/)" if what == "instances" else str(path)
        raise ConfigError(f"{where} does not exist: {hint}")
    import datasets  # only when asked: importing it costs about a second

    cache = str(run / ".hf-cache")
    if shards:
        ds = datasets.Dataset.from_parquet([str(p) for p in shards], cache_dir=cache)
        return _without_untruncated(ds)
    if path.stat().st_size == 0:  # nothing kept: an empty table, not a reader error
        return datasets.Dataset.from_list([])
    return datasets.Dataset.from_json(str(path), cache_dir=cache)


def _shards(run: Path) -> list[Path]:
    """The sharded build's instance files, as ``store.instance_files.shard_files`` names
    them (this module sits below ``store``, so it does not import it)."""
    folder = run / "instances"
    return sorted(p for p in folder.glob("part-*.parquet") if p.is_file()) \
        if folder.is_dir() else []


def _without_untruncated(ds: Any) -> Any:
    """The shards' ``input_truncated`` column, left out when no instance was truncated, as
    ``instances.jsonl`` leaves the key out (its JSON reader then has no such column)."""
    if "input_truncated" not in ds.column_names:
        return ds
    import pyarrow.compute as pc

    if pc.any(ds.data.column("input_truncated")).as_py():
        return ds
    return ds.remove_columns("input_truncated")
