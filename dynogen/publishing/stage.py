"""What a publish would put in the repository, written locally first.

Two passes over the target's instances: one for the facts the card needs
(``instances.provenance.DataFacts``), one writing the shards
(``instances.shards.write_shards``); then the card. Every file gets its size,
sha256 (what the Hub's LFS store is keyed by) and git blob id (what the Hub
reports for a file stored in git itself), so the remote side can be compared
without downloading anything.

>>> staged = stage(Target.open("runs/a"), Path("/tmp/x"), repo="org/name")  # doctest: +SKIP
>>> [f.path for f in staged.files]  # doctest: +SKIP
['README.md', 'data/permissive/train-00000.parquet']
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from dynogen.errors import RunDirError
from dynogen.instances.card import card_text
from dynogen.instances.provenance import DataFacts, Target
from dynogen.instances.shards import ROW_GROUP_ROWS, ROWS_PER_SHARD, file_digest, write_shards
from dynogen.policy.licenses import LICENSE_CLASSES

__all__ = ["CARD", "MANAGED", "LocalFile", "Staged", "git_blob_id", "stage"]

CARD = "README.md"
# The files a publish owns in a repository: only these are ever deleted from it.
_CLASSES = "|".join(LICENSE_CLASSES)
MANAGED = re.compile(rf"data/({_CLASSES})/(train|heldout)-\d{{5}}\.parquet")
_GIT_ID_MAX = 64 << 20  # blob ids only for files small enough to be stored in git itself


@dataclass(frozen=True, slots=True)
class LocalFile:
    path: str  # in the repository
    local: Path
    size: int
    sha256: str
    git_id: str  # "" for large files (the Hub keeps those in LFS: compared by sha256)


@dataclass(frozen=True)
class Staged:
    target: Target
    facts: DataFacts
    card: str
    files: list[LocalFile]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


def git_blob_id(path: Path) -> str:
    """The id git gives the file's content (``sha1("blob <size>\\0" + content)``)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _local(root: Path, rel: str, size: int | None = None, sha256: str | None = None,
           ) -> LocalFile:
    path = root / rel
    if size is None or sha256 is None:
        size, sha256 = file_digest(path)
    return LocalFile(rel, path, size, sha256, git_blob_id(path) if size <= _GIT_ID_MAX else "")


def stage(target: Target, root: Path, *, repo: str, rows_per_shard: int = ROWS_PER_SHARD,
          row_group_rows: int = ROW_GROUP_ROWS) -> Staged:
    """Write the shards and the card under ``root``; refuse a target with no instances."""
    facts = DataFacts.scan(target.records(), citations=target.citations)
    if facts.total == 0:
        raise RunDirError(f"{target.path} holds no instances: nothing to publish")
    shards = write_shards(target.records(), root, extra_columns=facts.extra_columns,
                          with_version=facts.with_version, rows_per_shard=rows_per_shard,
                          row_group_rows=row_group_rows)
    text = card_text(target, facts, repo=repo)
    (root / CARD).write_text(text, "utf-8")
    files = [_local(root, CARD)] + [_local(root, s.path, s.size, s.sha256) for s in shards]
    return Staged(target, facts, text, files)
