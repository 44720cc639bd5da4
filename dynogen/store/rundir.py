"""A run directory is the whole state of a run.

    manifest.json     config (no secrets), its prompt fingerprint, versions
    units.jsonl       journal: one line per unit committed (done/skipped/failed),
                      with its counters and the tasks.jsonl offset after it
    tasks.jsonl       kept tasks, in source order
    builds.jsonl      journal: one line per unit whose rows were built
    instances.jsonl   instances, in task order
    cache.sqlite      request cache (unless --cache points elsewhere)
    report.json       written at the end of every command (also after a stop)

Opening a directory that holds a run resumes it; if the prompt-shaping config
changed, it refuses (and says what differs) unless ``force_new``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import orjson

from dynogen import __version__
from dynogen.config import Config
from dynogen.errors import RunDirError
from dynogen.store.journal import iter_jsonl, repair, truncate_to

__all__ = ["RunDir"]

MANIFEST = "manifest.json"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.units = self.path / "units.jsonl"
        self.tasks = self.path / "tasks.jsonl"
        self.builds = self.path / "builds.jsonl"
        self.instances = self.path / "instances.jsonl"
        self.report = self.path / "report.json"
        self.manifest = self.path / MANIFEST
        self.resumed = False

    def open(self, config: Config) -> RunDir:
        """Create or resume; repair torn files; cut data back to the last commit."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise RunDirError(
                f"cannot write to output directory {self.path}: {e.strerror or e}; "
                "choose another --out"
            ) from None
        if self.manifest.exists():
            old = orjson.loads(self.manifest.read_bytes())
            if old.get("fingerprint") != config.prompt_fingerprint():
                if not config.force_new:
                    diff = _diff(old.get("prompt_settings", {}), config.prompt_settings())
                    raise RunDirError(
                        f"{self.path} holds a run with different prompt settings ({diff}); "
                        "resuming would mix two runs. Use a new --out, or --force-new to "
                        "discard it"
                    )
                self._clear()
            else:
                self.resumed = True
        self._write_manifest(config)
        self._repair()
        return self

    def _clear(self) -> None:
        # The request cache stays: it is keyed by the exact request, so it is never
        # stale, and keeping it is what makes re-deriving with new filters free.
        for p in (self.units, self.tasks, self.builds, self.instances, self.report,
                  self.path / "spend.jsonl", self.path / "calibration.json"):
            p.unlink(missing_ok=True)
        shutil.rmtree(self.path / "export", ignore_errors=True)

    def _write_manifest(self, config: Config) -> None:
        data = {
            "dynogen_version": __version__,
            "python": sys.version.split()[0],
            "fingerprint": config.prompt_fingerprint(),
            "prompt_settings": config.prompt_settings(),
            "config": config.public_dict(),
        }
        _atomic_write(self.manifest, orjson.dumps(data, option=orjson.OPT_INDENT_2))

    def _repair(self) -> None:
        for p in (self.units, self.tasks, self.builds, self.instances):
            repair(p)
        truncate_to(self.tasks, self._last_offset(self.units, "tasks_end"))
        truncate_to(self.instances, self._last_offset(self.builds, "instances_end"))

    @staticmethod
    def _last_offset(journal: Path, key: str) -> int:
        last = 0
        for rec in iter_jsonl(journal):
            v = rec.get(key)
            if isinstance(v, int):
                last = v
        return last

    def write_report(self, report: dict[str, Any]) -> None:
        _atomic_write(self.report, orjson.dumps(report, option=orjson.OPT_INDENT_2))


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(b, tuple):
            b = list(b)
        if a != b:
            parts.append(f"{k}: {a!r} -> {b!r}")
    return "; ".join(parts) or "unknown difference"
