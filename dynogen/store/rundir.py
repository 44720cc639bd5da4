"""A run directory is the whole state of a run.

    .dynogen.lock     held (flock) by the one process writing the directory
    manifest.json     config (no secrets), the run's identity, versions
    units.jsonl       journal: one line per unit committed (done/skipped/failed),
                      with its counters and the tasks.jsonl byte range it wrote
    tasks.jsonl       kept tasks, in source order
    builds.jsonl      journal: one line per unit whose rows were built, with
                      the instances.jsonl byte range it wrote
    instances.jsonl   instances, in task order
    spend.jsonl       one line per paid answer: the budget across resumes
    cache.sqlite      request cache (unless --cache points elsewhere)
    report.json       written at the end of every command (also after a stop)

Opening a directory takes its lock first (a second writer is refused), then
checks the run's identity — everything that shapes its outputs — and refuses
to resume one that differs (saying what differs) unless ``force_new``; then
verifies each journal against its data file and cuts both back to the last
record whose output is whole (see ``journal.verify_chain``), so what was lost
or torn is redone. What was repaired goes into ``report.json`` under
``repairs``; nothing about a spoiled file ends in a traceback.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import orjson
import xxhash

from dynogen.config import BUILD_FIELDS, IDENTITY_BEFORE, Config
from dynogen.errors import RunDirError
from dynogen.store.instance_files import SHARD_DIR
from dynogen.store.journal import count_garbage, iter_jsonl, repair, verify_chain
from dynogen.store.lock import RunLock
from dynogen.store.storage import atomic_write, storage_error, warn
from dynogen.version import __version__

__all__ = ["RunDir", "identity_diff"]

MANIFEST = "manifest.json"


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def identity_diff(old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any]) -> dict[
        str, tuple[Any, Any]]:
    """Keys whose values differ; a key an older manifest lacks counts as its default."""
    out = {}
    for k in sorted(set(old) | set(new)):
        a = old.get(k, defaults.get(k)) if k != "prompts" else old.get(k)
        b = _jsonable(new.get(k))
        if _jsonable(a) != b and not (k == "prompts" and a is None):
            out[k] = (a, b)
    if set(out) - {"prompts"}:
        out.pop("prompts", None)  # a changed field explains the changed prompts
    return out


def _describe_diff(diff: dict[str, tuple[Any, Any]], version: str | None = None) -> str:
    parts = []
    for k, (a, b) in diff.items():
        if k == "prompts":
            by = f"dynogen {version}" if version and version != __version__ else \
                "another dynogen version"
            parts.append(f"the prompts, few-shot examples or schema changed: this dynogen "
                         f"builds other request bodies than {by} sent for this run, and "
                         f"resuming would mix answers to two prompts; finish it with that "
                         f"version")
        elif k == "prompt_layout":
            parts.append(f"prompt_layout: it began with {a!r} and this run asks for {b!r}; "
                         f"pass --prompt-layout {a} (or leave it at auto, which keeps what a "
                         "run began with) to resume it")
        elif k == "max_tokens_by_variant" and a and not b:
            parts.append(f"max_tokens was sized to {a} by --max-tokens auto; pass "
                         "--max-tokens auto again to resume it")
        else:
            parts.append(f"{k}: {a!r} -> {b!r}")
    return "; ".join(parts) or "unknown difference"


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.units = self.path / "units.jsonl"
        self.tasks = self.path / "tasks.jsonl"
        self.builds = self.path / "builds.jsonl"
        self.instances = self.path / "instances.jsonl"
        self.spend = self.path / "spend.jsonl"
        self.report = self.path / "report.json"
        self.manifest = self.path / MANIFEST
        self.resumed = False
        self.repairs: dict[str, Any] = {}
        self.lock: RunLock | None = None

    def open(self, config: Config, *, identity: dict[str, Any], stage: str = "run") -> RunDir:
        """Lock, create or resume, check identity, repair. ``stage="build"`` (``dynogen
        build``) may change the build settings (``BUILD_FIELDS``): instances are then
        rebuilt from scratch rather than mixed.

        ``identity`` is the run's whole identity, handed in by the composition root
        (``dynogen.compose.run_identity``: the config's identity fields and a digest of
        the prompts); the store does not build prompts."""
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
        self.lock = RunLock(self.path, purpose=stage).acquire()
        try:
            self._open(config, identity, stage)
        except BaseException:
            self.close()
            raise
        return self

    def _open(self, config: Config, identity: dict[str, Any], stage: str) -> None:
        orphaned = not self.manifest.exists() and any(
            p.exists() and p.stat().st_size for p in (self.units, self.tasks, self.spend))
        if self.manifest.exists() or orphaned:
            old = self._read_manifest(config)
            if old is None:  # spoiled, and force_new: start over
                self._clear()
            else:
                diff = self._diff(old, identity)
                rebuild = {k: v for k, v in diff.items() if k in BUILD_FIELDS}
                if diff and stage == "build" and diff == rebuild:
                    self._clear_builds()
                    self.repairs["rebuilt_for"] = {k: list(v) for k, v in rebuild.items()}
                    self.resumed = True
                elif diff and not config.force_new:
                    raise RunDirError(
                        f"{self.path} holds a run with different settings "
                        f"({_describe_diff(diff, old.get('dynogen_version'))}); resuming would "
                        "mix two runs. Use a new --out, or --force-new to discard it (the "
                        "request cache is kept)")
                elif diff:
                    self._clear()
                else:
                    self.resumed = True
        self._write_manifest(config, identity)
        self._repair()

    def record(self, config: Config, identity: dict[str, Any]) -> None:
        """Write the manifest for ``config``: a setting resolved after opening (``--max-tokens
        auto`` from a pilot) joins the identity before anything is committed."""
        self._write_manifest(config, identity)

    def close(self) -> None:
        """Release the lock (the OS does it too if the process dies)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # ----------------------------------------------------------------- manifest
    def _read_manifest(self, config: Config) -> dict[str, Any] | None:
        try:
            old = orjson.loads(self.manifest.read_bytes())
            if not isinstance(old, dict) or not isinstance(
                    old.get("identity", old.get("prompt_settings")), dict):
                raise ValueError("not a dynogen manifest")
            return old
        except (OSError, ValueError) as e:  # orjson.JSONDecodeError is a ValueError
            if config.force_new:
                return None
            what = ("it is missing" if isinstance(e, FileNotFoundError)
                    else getattr(e, "strerror", None) or (
                        "not valid JSON" if isinstance(e, orjson.JSONDecodeError) else str(e)))
            raise RunDirError(
                f"{self.manifest} cannot be read ({what}), so whether this run may be resumed "
                f"is unknown; {self._at_stake()}. Restore manifest.json from a backup and run "
                "again, or run with --force-new to start over (the request cache is kept)"
            ) from None

    def _at_stake(self) -> str:
        units = sum(1 for _ in iter_jsonl(self.units))
        tasks = sum(1 for _ in iter_jsonl(self.tasks))
        usd = sum(float(r.get("usd") or 0.0) for r in iter_jsonl(self.spend))
        return (f"it holds {units} committed units, {tasks} tasks and ${usd:.4f} of paid "
                "answers")

    @staticmethod
    def _diff(old: dict[str, Any], identity: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        # A key an older manifest lacks: it ran with IDENTITY_BEFORE's value, else the default.
        defaults = {**Config().identity(), **IDENTITY_BEFORE}
        if isinstance(old.get("identity"), dict):
            return identity_diff(old["identity"], identity, defaults)
        # A manifest from before identities: compare what it recorded.
        recorded = old.get("prompt_settings", {})
        return identity_diff(recorded, {k: identity[k] for k in recorded if k in identity},
                             defaults)

    def _write_manifest(self, config: Config, identity: dict[str, Any]) -> None:
        data = {
            "dynogen_version": __version__,
            "python": sys.version.split()[0],
            "identity": identity,
            "fingerprint": xxhash.xxh3_64_hexdigest(orjson.dumps(identity,
                                                                 option=orjson.OPT_SORT_KEYS)),
            "config": config.public_dict(),
        }
        atomic_write(self.manifest, orjson.dumps(data, option=orjson.OPT_INDENT_2))

    # ---------------------------------------------------------------- clearing
    def _clear(self) -> None:
        # The request cache stays: it is keyed by the exact request, so it is never
        # stale, and keeping it is what makes re-deriving with new filters free.
        for p in (self.units, self.tasks, self.builds, self.instances, self.report,
                  self.spend, self.path / "calibration.json"):
            p.unlink(missing_ok=True)
        shutil.rmtree(self.path / "export", ignore_errors=True)
        shutil.rmtree(self.path / SHARD_DIR, ignore_errors=True)

    def _clear_builds(self) -> None:
        for p in (self.builds, self.instances):
            p.unlink(missing_ok=True)
        shutil.rmtree(self.path / SHARD_DIR, ignore_errors=True)  # the sharded build's

    def take_build(self, engine: str) -> bool:
        """Clear the other engine's instances before ``engine`` (``local`` or ``ray``)
        builds: a run holds one engine's output, never both. Says whether it cleared any."""
        shards = self.path / SHARD_DIR
        if engine == "ray" and (self.builds.exists() or self.instances.exists()):
            self.builds.unlink(missing_ok=True)
            self.instances.unlink(missing_ok=True)
        elif engine == "local" and shards.exists():
            shutil.rmtree(shards)
        else:
            return False
        self.repairs["rebuilt_for"] = {"engine": ["ray" if engine == "local" else "local",
                                                  engine]}
        return True

    # ----------------------------------------------------------------- repair
    def _repair(self) -> None:
        try:
            units = verify_chain(self.units, self.tasks, start="tasks_start", end="tasks_end",
                                 count="tasks_kept")
            with_tasks = {str(r.get("key")) for r in iter_jsonl(self.units)
                          if r.get("tasks_kept")}
            builds = verify_chain(self.builds, self.instances, start="instances_start",
                                  end="instances_end", count="instances",
                                  keep=lambda r: str(r.get("key")) in with_tasks)
            spend_torn = repair(self.spend)
            spend_garbage = count_garbage(self.spend)
        except OSError as e:
            raise storage_error(e, self.units) from None
        for name, check in (("units.jsonl", units), ("builds.jsonl", builds)):
            if check.changed:
                self.repairs[name] = check.to_dict()
        if spend_torn or spend_garbage:
            self.repairs["spend.jsonl"] = {"torn_bytes_cut": spend_torn,
                                           "garbage_lines_skipped": spend_garbage}
        if units.dropped or builds.dropped or units.garbage or builds.garbage:
            warn(f"{self.path}: {units.dropped} unit and {builds.dropped} build records "
                 f"were cut at {units.reason or builds.reason}; they are redone now (from the "
                 "request cache where it has them)")
        if spend_garbage:
            warn(f"{self.spend}: {spend_garbage} unreadable lines skipped; the spend they "
                 "recorded is not counted against --budget-usd")

    # ------------------------------------------------------------------ output
    def write_report(self, report: dict[str, Any]) -> None:
        if self.repairs:
            report = {**report, "repairs": self.repairs}
        atomic_write(self.report, orjson.dumps(report, option=orjson.OPT_INDENT_2))

