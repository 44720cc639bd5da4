"""One dataset repository on the Hub, through ``huggingface_hub``'s own client.

What a publish asks of the Hub, and what the client sends for it:

- ``state``: ``GET /api/datasets/{repo}`` (head commit, visibility), then
  ``GET /api/datasets/{repo}/tree/{sha}?recursive=true``: every file with its
  size, git blob id and, for LFS files, sha256. A missing repository is ``None``.
- ``create``: ``POST /api/repos/create`` (``type: dataset``, ``visibility``).
- ``commit``: ``HfApi.create_commit``, which validates the card's YAML
  (``POST /api/validate-yaml``), asks which files go to LFS
  (``POST /api/datasets/{repo}/preupload/main``), asks the LFS batch endpoint
  (``POST /datasets/{repo}.git/info/lfs/objects/batch``, by sha256 and size)
  which objects the Hub lacks, uploads only those (``PUT`` to the URL it gives;
  with ``hf_xet`` installed the real Hub takes them through Xet instead, which
  skips chunks it holds), then sends one NDJSON commit: small files inline,
  LFS files by sha256, deletions by path. ``parentCommit`` is the head read by
  ``state``, so a repository changed meanwhile refuses the commit.

Resuming is the LFS store's doing: an object uploaded by a publish that died
before its commit is still there, so the next publish's batch request gets no
upload action for it. The token is whatever ``huggingface_hub`` resolves
(``HF_TOKEN``, a stored login, or the one handed in, kept in a ``Secret``); it
goes into request headers only, never into a message, a log line or a file.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dynogen.config import Secret
from dynogen.errors import PublishError
from dynogen.publishing.stage import LocalFile

__all__ = ["HubRepo", "RemoteFile", "RemoteState"]


@dataclass(frozen=True, slots=True)
class RemoteFile:
    path: str
    size: int
    git_id: str
    sha256: str | None  # LFS files only

    def same(self, f: LocalFile) -> bool:
        """Whether the repository already holds ``f``'s content at its path."""
        if self.sha256 is not None:
            return self.sha256 == f.sha256
        return bool(f.git_id) and self.git_id == f.git_id


@dataclass(frozen=True)
class RemoteState:
    private: bool
    sha: str | None
    files: dict[str, RemoteFile]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures below HTTP (``huggingface_hub`` has used requests, httpx, httpx2)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests.exceptions", "ConnectionError"),
                         ("requests.exceptions", "Timeout")):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


_RESUME = "run the same command again to resume (files already uploaded are not sent twice)"


class HubRepo:
    """A dataset repository: read its state, create it, commit to it.

    >>> repo = HubRepo("org/name", endpoint="http://127.0.0.1:8000")  # doctest: +SKIP
    >>> repo.state() is None  # doctest: +SKIP
    True
    """

    def __init__(self, repo_id: str, *, endpoint: str | None = None,
                 token: Secret | None = None) -> None:
        from huggingface_hub import HfApi

        self.repo_id = repo_id
        self._token = token or Secret(None)
        self.api = HfApi(endpoint=endpoint, token=self._token.get())
        self.endpoint = str(self.api.endpoint).rstrip("/")

    @property
    def url(self) -> str:
        return f"{self.endpoint}/datasets/{self.repo_id}"

    @contextlib.contextmanager
    def _calls(self, action: str) -> Iterator[None]:
        from huggingface_hub import errors as hf

        try:
            yield
        except hf.OfflineModeIsEnabled:
            raise PublishError(f"cannot {action}: HF_HUB_OFFLINE is set; unset it to publish "
                               "(--dry-run works offline)") from None
        except hf.HfHubHTTPError as e:
            raise self._refused(action, e) from None
        except _transport_errors() as e:
            raise PublishError(f"cannot reach the Hub at {self.endpoint} to {action} "
                               f"({_first_line(e)}): check the network, then {_RESUME}") from None
        except RuntimeError as e:  # an LFS upload that failed, wrapped by huggingface_hub
            cause = e.__cause__
            if isinstance(cause, hf.HfHubHTTPError):
                raise self._refused(action, cause) from None
            if isinstance(cause, _transport_errors()):
                raise PublishError(f"an upload to {self.endpoint} was cut off ("
                                   f"{_first_line(e)}): {_RESUME}") from None
            raise

    def _refused(self, action: str, e: Any) -> PublishError:
        status = getattr(getattr(e, "response", None), "status_code", 0) or 0
        owner = self.repo_id.split("/")[0]
        hint = {
            401: "the Hub refused the token: set HF_TOKEN to a token with write access (or log "
                 "in with the Hugging Face CLI)",
            403: f"the token may not write to {owner}: use one with write access to it",
            409: f"{self.repo_id} exists but this token cannot see it: use a token that can, or "
                 "another --repo",
            412: f"{self.repo_id} changed while publishing: {_RESUME}",
        }.get(status, _RESUME if status >= 500 or status == 429 else "see the Hub's message")
        return PublishError(f"cannot {action} {self.repo_id} ({_first_line(e)}): {hint}")

    def state(self) -> RemoteState | None:
        """The repository's head, visibility and files; ``None`` if there is no such repo
        (or it is private and the token cannot see it)."""
        from huggingface_hub import RepoFile
        from huggingface_hub import errors as hf

        with self._calls("read"):
            try:
                info = self.api.dataset_info(self.repo_id)
            except hf.RepositoryNotFoundError:
                return None
            files: dict[str, RemoteFile] = {}
            for entry in self.api.list_repo_tree(self.repo_id, repo_type="dataset",
                                                 recursive=True, revision=info.sha):
                if isinstance(entry, RepoFile):
                    sha = entry.lfs.sha256 if entry.lfs is not None else None
                    files[entry.path] = RemoteFile(entry.path, int(entry.size), entry.blob_id,
                                                   sha)
        return RemoteState(bool(info.private), info.sha, files)

    def create(self, *, private: bool) -> None:
        with self._calls("create"):
            self.api.create_repo(self.repo_id, repo_type="dataset", private=private)

    def commit(self, adds: list[LocalFile], deletes: list[str], *, message: str,
               description: str, parent: str | None) -> str:
        """One commit: ``adds`` uploaded (LFS objects the Hub holds are not sent again) and
        ``deletes`` removed. Returns the commit id."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        ops: list[Any] = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(f.local))
                          for f in adds]
        ops += [CommitOperationDelete(path_in_repo=p) for p in deletes]
        with self._calls("commit to"):
            info = self.api.create_commit(self.repo_id, ops, commit_message=message,
                                          commit_description=description, repo_type="dataset",
                                          parent_commit=parent)
        return str(info.oid)
