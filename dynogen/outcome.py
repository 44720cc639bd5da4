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
    """A run directory's ``instances.jsonl`` (or ``tasks.jsonl``) as a ``datasets.Dataset``.

    Read with ``datasets``' JSON reader into Arrow files under the run directory
    (``.hf-cache``), so a large output is memory-mapped, not held in memory.
    """
    if what not in ("instances", "tasks"):
        raise ConfigError(f"what must be instances or tasks (got {what!r})")
    path = Path(run_dir) / f"{what}.jsonl"
    if not path.is_file():
        hint = ("export the collection (dynogen export --collection) and load that"
                if (Path(run_dir) / "collection.json").exists()
                else "run `dynogen run` (or `dynogen build`) first")
        raise ConfigError(f"{path} does not exist: {hint}")
    import datasets  # only when asked: importing it costs about a second

    if path.stat().st_size == 0:  # nothing kept: an empty table, not a reader error
        return datasets.Dataset.from_list([])
    return datasets.Dataset.from_json(str(path), cache_dir=str(Path(run_dir) / ".hf-cache"))
