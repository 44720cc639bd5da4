"""``dynogen publish``: a run's (or a collection's) instances to a Hub dataset repository.

The steps, each safe to repeat:

1. stage: the shards and the card are written to a temporary folder inside the
   target (``publishing.stage``), with sizes and hashes, under the target's lock
   (a run or a grow writing it meanwhile is refused, naming it; the lock is let
   go before anything is sent);
2. read the repository (``publishing.remote.HubRepo.state``): does it exist, is it
   public, which files does it hold and with what content;
3. the licence gate: if the repository is (or would be created) public and any
   source dataset is non-commercial, no-derivatives, ``other`` or of unknown
   licence, refuse unless ``allow_restricted_licenses``, naming them. A new
   repository is private unless ``public``; an existing one keeps its visibility;
4. compare: a file whose content the repository already holds at its path is
   not sent; a shard the repository holds that the data no longer has is deleted
   (only paths this layout owns, ``stage.MANAGED``); nothing to send and nothing
   to delete means no commit at all;
5. create the repository if needed, then one commit.

A publish killed during step 5 leaves its uploaded LFS objects on the Hub; the
same command stages the same bytes and the Hub's LFS check skips them. With
``dry_run`` nothing is written to the Hub: the repository is read when it can
be (else every file is listed as to upload) and the result lists every file with
its size, sha256 and what would happen to it, and the card.

>>> result = publish("runs/a", repo="me/dynogen-demo", dry_run=True)  # doctest: +SKIP
>>> print(result.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynogen.config import Secret
from dynogen.errors import ConfigError, PublishError, RestrictedLicenseError
from dynogen.instances.provenance import Target
from dynogen.instances.shards import ROW_GROUP_ROWS, ROWS_PER_SHARD
from dynogen.publishing.remote import HubRepo, RemoteState
from dynogen.publishing.stage import MANAGED, Staged, stage
from dynogen.store.lock import RunLock
from dynogen.version import __version__

__all__ = ["FileAction", "PublishResult", "publish"]

_STAGING = ".dynogen-publish-"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


@dataclass(frozen=True, slots=True)
class FileAction:
    path: str
    size: int
    sha256: str
    action: str  # "upload" | "unchanged" | "delete"


@dataclass
class PublishResult:
    """What a publish did (or, with ``dry_run``, would do)."""

    repo: str
    url: str
    dry_run: bool
    instances: int
    files: list[FileAction]
    card: str
    private: bool | None  # None: a dry run that could not read the repository
    created: bool = False
    commit: str | None = None
    remote_checked: bool = True
    notes: list[str] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for f in self.files if f.action == action)

    @property
    def bytes_to_upload(self) -> int:
        """Bytes of the new or changed files: what is sent at most (``huggingface_hub``
        skips LFS objects the repository already holds, e.g. from a publish cut off)."""
        return sum(f.size for f in self.files if f.action == "upload")

    def summary(self) -> str:
        send, delete = ("to send", "to delete") if self.dry_run else ("sent", "deleted")
        sent = (f" ({self.bytes_to_upload:,} bytes, less what the Hub's LFS store already "
                "holds)" if self.count("upload") else "")
        files = (f"{self.count('upload')} files {send}{sent}, {self.count('unchanged')} "
                 f"unchanged, {self.count('delete')} stale shards {delete}")
        seen = "private" if self.private else "public" if self.private is not None else (
            "visibility unknown")
        if self.dry_run:
            head = f"dry run, nothing sent: {self.repo} ({seen})"
        elif self.commit is None:
            head = f"nothing changed: {self.repo} ({seen}) already holds this data; no commit"
        else:
            head = (f"published {self.instances:,} instances to {self.url} ({seen}"
                    f"{', created' if self.created else ''}) in commit {self.commit[:12]}")
        return "; ".join([head, files, *self.notes])

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo, "url": self.url, "dry_run": self.dry_run,
            "instances": self.instances, "private": self.private, "created": self.created,
            "commit": self.commit, "remote_checked": self.remote_checked,
            "bytes_to_upload": self.bytes_to_upload, "notes": self.notes,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "action": f.action}
                      for f in self.files],
        }


def _plan(staged: Staged, remote: RemoteState | None) -> list[FileAction]:
    have = remote.files if remote is not None else {}
    out = []
    for f in staged.files:
        r = have.get(f.path)
        same = r is not None and r.same(f)
        out.append(FileAction(f.path, f.size, f.sha256, "unchanged" if same else "upload"))
    local = {f.path for f in staged.files}
    out += [FileAction(p, r.size, r.sha256 or "", "delete") for p, r in sorted(have.items())
            if p not in local and MANAGED.fullmatch(p)]
    return out


def _gate(staged: Staged, *, public: bool, allowed: bool) -> None:
    restricted = staged.facts.restricted()
    if not public or allowed or not restricted:
        return
    named = ", ".join(f"{s.dataset} ({s.license or 'no licence'}: {s.license_class})"
                      for s in restricted[:20])
    more = f" and {len(restricted) - 20} more" if len(restricted) > 20 else ""
    raise RestrictedLicenseError(
        f"refusing a public push: {len(restricted)} source datasets may not allow "
        f"redistribution: {named}{more}. Publish privately (the default), or pass "
        "--allow-restricted-licenses once you have checked their terms")


def _message(staged: Staged) -> tuple[str, str]:
    facts, runs = staged.facts, staged.target.runs
    title = (f"dynogen {__version__}: {facts.total:,} instances from {len(facts.sources):,} "
             "source datasets")
    prints = ", ".join(f"{r.label} {r.manifest.get('fingerprint')}" for r in runs)
    return title, f"Run fingerprints: {prints}."


def _clear_stale_staging(folder: Path) -> None:
    """Staging folders left by a publish that was killed (its pid is gone): shards can be
    large, and the next publish writes its own."""
    for p in folder.glob(f"{_STAGING}*"):
        pid = p.name[len(_STAGING):].partition("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:  # alive, another user's
            continue


def publish(
    target: str | Path,
    *,
    repo: str,
    public: bool = False,
    dry_run: bool = False,
    allow_restricted_licenses: bool = False,
    endpoint: str | None = None,
    token: str | Secret | None = None,
    rows_per_shard: int = ROWS_PER_SHARD,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> PublishResult:
    """Upload ``target``'s instances (a run directory or a collection) to the dataset
    repository ``repo`` (``ORG/NAME``) as Parquet shards with a dataset card.

    ``token``: default ``HF_TOKEN`` or the stored Hugging Face login; ``endpoint``:
    default ``HF_ENDPOINT`` or huggingface.co. See the module docstring for the steps.
    """
    if not _REPO_ID.fullmatch(repo):
        raise ConfigError(f"--repo must be ORG/NAME (letters, digits, -, _, .), got {repo!r}")
    secret = token if isinstance(token, Secret) else Secret(token)
    tgt = Target.open(target)
    hub = HubRepo(repo, endpoint=endpoint, token=secret)
    _clear_stale_staging(tgt.path)
    with tempfile.TemporaryDirectory(prefix=f"{_STAGING}{os.getpid()}-", dir=tgt.path) as tmp:
        with RunLock(tgt.path, purpose="publish"):  # a consistent snapshot: no writer meanwhile
            staged = stage(tgt, Path(tmp), repo=repo, rows_per_shard=rows_per_shard,
                           row_group_rows=row_group_rows)
        notes: list[str] = []
        try:
            remote = hub.state()
            checked = True
        except PublishError as e:
            if not dry_run:
                raise
            remote, checked = None, False
            notes.append(f"repository not read ({e})")
        will_be_public = public if remote is None else not remote.private
        if remote is not None and public and remote.private:
            notes.append(f"{repo} exists and stays private: --public applies to a new "
                         "repository; change its visibility in its settings")
        _gate(staged, public=will_be_public, allowed=allow_restricted_licenses)
        plan = _plan(staged, remote)
        result = PublishResult(repo, hub.url, dry_run, staged.facts.total, plan, staged.card,
                               None if not checked else not will_be_public,
                               remote_checked=checked, notes=notes)
        if dry_run:
            return result
        if remote is None:
            hub.create(private=not public)
            result.created = True
            remote = hub.state()
            if remote is None:
                raise PublishError(f"{repo} was created but cannot be read back: {hub.url}")
            plan = result.files = _plan(staged, remote)
        uploads = {a.path for a in plan if a.action == "upload"}
        adds = [f for f in staged.files if f.path in uploads]
        deletes = [a.path for a in plan if a.action == "delete"]
        if adds or deletes:
            title, description = _message(staged)
            result.commit = hub.commit(adds, deletes, message=title, description=description,
                                       parent=remote.sha)
        return result
