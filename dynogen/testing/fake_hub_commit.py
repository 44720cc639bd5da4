"""A fake of the Hub's write side, for ``dynogen publish`` tests: real HTTP, real client.

It serves what ``huggingface_hub`` calls to create a dataset repository and
commit to it, over aiohttp, so the real ``HfApi`` publishes to it unchanged:

* ``POST /api/repos/create`` (409 if it exists; a new repo holds ``.gitattributes``);
* ``GET /api/datasets/{repo}`` (and ``/revision/{rev}``): head commit, visibility;
* ``GET /api/datasets/{repo}/tree/{rev}``: files with size, git blob id, LFS sha256;
* ``POST /api/validate-yaml``: the card's YAML header (licence ids, ``configs``);
* ``POST /api/datasets/{repo}/preupload/{rev}``: ``lfs`` for data files (by suffix,
  binary sample or size), ``regular`` for the rest, with the path's current oid;
* ``POST /datasets/{repo}.git/info/lfs/objects/batch``: the basic transfer; objects
  the repository's LFS store holds get no ``upload`` action (the resume);
* ``PUT /lfs-upload/{repo}/{oid}`` (checks sha256 and size) and ``POST /lfs-verify``;
* ``POST /api/datasets/{repo}/commit/{rev}``: NDJSON (header, inline files, LFS
  files by oid, deletions), honouring ``parentCommit``;
* ``GET|HEAD /datasets/{repo}/resolve/{rev}/{path}``: file content, with the
  ``ETag``/``X-Repo-Commit``/``X-Linked-*`` headers ``hf_hub_download`` reads.

It counts completed LFS uploads (per repository and oid, and bytes), inline bytes and commits,
and with ``cut_after=N`` lets N uploads through and closes the connection of every
later one: a publish killed midway. Writes need a bearer token (``token``,
when set, is the only one accepted); requests are recorded with whether one
came, never its value. ``huggingface_hub`` uploads through Xet when ``hf_xet``
is installed, which this fake does not speak: publish to it with
``HF_HUB_DISABLE_XET=1`` (tests set ``constants.HF_HUB_DISABLE_XET``).

    fake = FakeHubCommits()
    with fake.running() as url:                # its own thread and event loop
        publish("runs/a", repo="org/name", endpoint=url)
    fake.commits, fake.bytes_uploaded

``python -m dynogen.testing.fake_hub_commit`` serves one until Ctrl-C and prints its URL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import yaml
from aiohttp import web

from dynogen.policy.licenses import HUB_LICENSES

__all__ = ["FakeHubCommits", "FakeRepo", "StoredFile", "make_app", "serve_hub_commits"]

LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".zst", ".gz", ".zip", ".npy", ".safetensors")
REGULAR_MAX = 10 << 20
GITATTRIBUTES = (b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
                 b"*.arrow filter=lfs diff=lfs merge=lfs -text\n")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A committed file: inline ``content``, or an LFS object by ``lfs_oid``."""

    size: int
    blob_id: str
    content: bytes | None = None
    lfs_oid: str | None = None

    @property
    def oid(self) -> str:
        """What preupload reports for the path: sha256 for LFS, the git id otherwise."""
        return self.lfs_oid or self.blob_id


@dataclass
class FakeRepo:
    repo_id: str
    private: bool
    files: dict[str, StoredFile] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)  # uploaded objects, committed or not
    history: list[str] = field(default_factory=list)  # commit ids, oldest first

    @property
    def sha(self) -> str:
        return self.history[-1]

    def commit(self, summary: str) -> str:
        listing = orjson.dumps(sorted((p, f.oid) for p, f in self.files.items()))
        parent = self.history[-1] if self.history else ""
        sha = hashlib.sha1(parent.encode() + summary.encode() + listing,
                           usedforsecurity=False).hexdigest()
        self.history.append(sha)
        return sha


@dataclass
class FakeHubCommits:
    """Repositories, counters and the request log. See the module docstring."""

    repos: dict[str, FakeRepo] = field(default_factory=dict)
    token: str | None = None
    cut_after: int | None = None
    uploads: int = 0
    uploads_by_oid: Counter[tuple[str, str]] = field(default_factory=Counter)  # (repo, oid)
    lfs_bytes: int = 0
    inline_bytes: int = 0
    commits: int = 0
    cuts: int = 0
    admitted: int = 0  # uploads let through (``cut_after`` counts these, not completions)
    requests: list[tuple[str, str, bool]] = field(default_factory=list)  # method, path, authed

    @property
    def bytes_uploaded(self) -> int:
        return self.lfs_bytes + self.inline_bytes

    def counters(self) -> dict[str, int]:
        return {"uploads": self.uploads, "bytes_uploaded": self.bytes_uploaded,
                "lfs_bytes": self.lfs_bytes, "inline_bytes": self.inline_bytes,
                "commits": self.commits, "cuts": self.cuts}

    def file(self, repo_id: str, path: str) -> bytes:
        repo = self.repos[repo_id]
        f = repo.files[path]
        return f.content if f.content is not None else repo.lfs[str(f.lfs_oid)]

    @contextmanager
    def running(self, host: str = "127.0.0.1") -> Iterator[str]:
        """Serve on a background thread's event loop; yields the endpoint URL."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        box: dict[str, Any] = {}

        async def main() -> None:
            box["stop"] = asyncio.Event()
            async with serve_hub_commits(self, host) as url:
                box["url"] = url
                ready.set()
                await box["stop"].wait()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True,
                                  name="fake-hub-commit")
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake Hub did not start")
        try:
            yield box["url"]
        finally:
            loop.call_soon_threadsafe(box["stop"].set)
            thread.join(10)
            loop.close()


def _error(status: int, message: str, code: str = "") -> web.Response:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return web.Response(status=status, body=orjson.dumps({"error": message}),
                        content_type="application/json", headers=headers)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def make_app(fake: FakeHubCommits) -> web.Application:
    def authorized(request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or len(auth) <= 7:
            return False
        return fake.token is None or auth[7:] == fake.token

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        fake.requests.append((request.method, request.path, authorized(request)))
        response: web.StreamResponse = await handler(request)
        return response

    def repo_for(request: web.Request, *, write: bool = False) -> FakeRepo | web.Response:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        if write and not authorized(request):
            return _error(401, "Invalid credentials in Authorization header")
        repo = fake.repos.get(repo_id)
        if repo is None or (repo.private and not authorized(request)):
            return _error(404 if authorized(request) else 401, "Repository not found",
                          "RepoNotFound")
        return repo

    async def create(request: web.Request) -> web.Response:
        if not authorized(request):
            return _error(401, "Invalid credentials in Authorization header")
        body = await request.json()
        if body.get("type") != "dataset":
            return _error(400, "this fake holds dataset repositories only")
        repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
        url = f"{request.url.origin()}/datasets/{repo_id}"
        if repo_id in fake.repos:
            return _json({"error": "You already created this dataset repo", "url": url}, 409)
        private = body.get("visibility", "private" if body.get("private") else "public")
        repo = fake.repos[repo_id] = FakeRepo(repo_id, private == "private")
        repo.files[".gitattributes"] = StoredFile(len(GITATTRIBUTES), git_blob_id(GITATTRIBUTES),
                                                  content=GITATTRIBUTES)
        repo.commit("initial commit")
        return _json({"url": url, "name": repo_id, "id": repo_id})

    async def info(request: web.Request) -> web.Response:
        repo = repo_for(request)
        if isinstance(repo, web.Response):
            return repo
        return _json({"id": repo.repo_id, "sha": repo.sha, "private": repo.private,
                      "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

    async def tree(request: web.Request) -> web.Response:
        repo = repo_for(request)
        if isinstance(repo, web.Response):
            return repo
        prefix = request.match_info.get("path", "").strip("/")
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path, f in sorted(repo.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            parts = path.split("/")
            folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
            entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size,
                                     "path": path}
            if f.lfs_oid:
                entry["lfs"] = {"oid": f.lfs_oid, "size": f.size, "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "oid": git_blob_id(d.encode()), "size": 0, "path": d}
                    for d in sorted(folders) if not prefix or d.startswith(prefix + "/")]
        return _json(entries)

    async def validate_yaml(request: web.Request) -> web.Response:
        content = str((await request.json()).get("content", ""))
        errors: list[str] = []
        if content.startswith("---"):
            try:
                meta = yaml.safe_load(content.split("---", 2)[1]) or {}
            except yaml.YAMLError as e:
                meta, errors = {}, [f"invalid YAML: {e}"]
            licences = meta.get("license") or []
            for lic in [licences] if isinstance(licences, str) else licences:
                if lic not in HUB_LICENSES:
                    errors.append(f'"license" must be one of the Hub\'s ids, got "{lic}"')
            for cfg in meta.get("configs") or []:
                if not cfg.get("config_name") or not all(
                        isinstance(d, dict) and d.get("split") and d.get("path")
                        for d in cfg.get("data_files") or [None]):
                    errors.append(f"configs: malformed entry {cfg!r}")
        if errors:
            return _json({"errors": [{"message": m} for m in errors], "warnings": []}, 400)
        return _json({"errors": [], "warnings": []})

    async def preupload(request: web.Request) -> web.Response:
        repo = repo_for(request, write=True)
        if isinstance(repo, web.Response):
            return repo
        out = []
        for f in (await request.json())["files"]:
            sample = base64.b64decode(f.get("sample", ""))
            lfs = (str(f["path"]).endswith(LFS_SUFFIXES) or b"\0" in sample
                   or int(f["size"]) > REGULAR_MAX)
            held = repo.files.get(f["path"])
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False, "oid": held.oid if held else None})
        return _json({"files": out, "commitOid": repo.sha})

    async def lfs_batch(request: web.Request) -> web.Response:
        repo = repo_for(request, write=True)
        if isinstance(repo, web.Response):
            return repo
        body = await request.json()
        base = f"{request.url.origin()}"
        objects = []
        for o in body.get("objects", []):
            obj: dict[str, Any] = {"oid": o["oid"], "size": int(o["size"]), "authenticated": True}
            if o["oid"] not in repo.lfs:
                obj["actions"] = {
                    "upload": {"href": f"{base}/lfs-upload/{repo.repo_id}/{o['oid']}"},
                    "verify": {"href": f"{base}/lfs-verify/{repo.repo_id}"},
                }
            objects.append(obj)
        return _json({"transfer": "basic", "objects": objects})

    async def lfs_upload(request: web.Request) -> web.StreamResponse:
        if fake.cut_after is not None and fake.admitted >= fake.cut_after:
            fake.cuts += 1
            if request.transport is not None:
                request.transport.close()  # no answer: the client sees the connection cut
            return web.Response(status=500)
        fake.admitted += 1  # counted on arrival: concurrent uploads cannot slip past the cut
        repo = fake.repos.get(f"{request.match_info['org']}/{request.match_info['name']}")
        if repo is None:
            return _error(404, "Repository not found", "RepoNotFound")
        data = await request.read()
        oid = request.match_info["oid"]
        if hashlib.sha256(data).hexdigest() != oid:
            return _error(400, "the uploaded content does not match its sha256")
        repo.lfs[oid] = data
        fake.uploads += 1
        fake.uploads_by_oid[(repo.repo_id, oid)] += 1
        fake.lfs_bytes += len(data)
        return web.Response(status=200)

    async def lfs_verify(request: web.Request) -> web.Response:
        repo = fake.repos.get(f"{request.match_info['org']}/{request.match_info['name']}")
        body = await request.json()
        if repo is None or body.get("oid") not in repo.lfs:
            return _error(404, "object not found")
        return _json({"success": True})

    async def commit(request: web.Request) -> web.Response:
        repo = repo_for(request, write=True)
        if isinstance(repo, web.Response):
            return repo
        lines = [orjson.loads(x) for x in (await request.read()).splitlines() if x.strip()]
        header: dict[str, Any] = next((x["value"] for x in lines if x["key"] == "header"), {})
        parent = header.get("parentCommit")
        if parent and not repo.sha.startswith(parent):
            return _error(412, f"A commit has happened since {parent}: the head is {repo.sha}")
        staged = dict(repo.files)
        inline = 0
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                data = base64.b64decode(value["content"])
                inline += len(data)
                staged[value["path"]] = StoredFile(len(data), git_blob_id(data), content=data)
            elif key == "lfsFile":
                obj = repo.lfs.get(value["oid"])
                if obj is None:
                    return _error(422, f"LFS object {value['oid']} was never uploaded")
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{value['oid']}"
                staged[value["path"]] = StoredFile(len(obj), git_blob_id(pointer.encode()),
                                                   lfs_oid=value["oid"])
            elif key == "deletedFile":
                if staged.pop(value["path"], None) is None:
                    return _error(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                staged = {p: f for p, f in staged.items() if not p.startswith(prefix)}
        repo.files = staged
        sha = repo.commit(str(header.get("summary", "")))
        fake.commits += 1
        fake.inline_bytes += inline
        return _json({"success": True, "commitOid": sha, "hookOutput": "",
                      "commitUrl": f"{request.url.origin()}/datasets/{repo.repo_id}/commit/{sha}",
                      "pullRequestUrl": None})

    async def resolve(request: web.Request) -> web.Response:
        repo = repo_for(request)
        if isinstance(repo, web.Response):
            return repo
        f = repo.files.get(request.match_info["path"])
        if f is None:
            return _error(404, "Entry not found", "EntryNotFound")
        data = f.content if f.content is not None else repo.lfs[str(f.lfs_oid)]
        headers = {"ETag": f'"{f.oid}"', "X-Repo-Commit": repo.sha,
                   "Content-Length": str(len(data))}
        if f.lfs_oid:
            headers.update({"X-Linked-Etag": f'"{f.lfs_oid}"', "X-Linked-Size": str(len(data))})
        body = b"" if request.method == "HEAD" else data
        return web.Response(body=body, headers=headers, content_type="application/octet-stream")

    repo = "{org}/{name}"
    app = web.Application(middlewares=[record], client_max_size=1 << 31)
    app.router.add_post("/api/repos/create", create)
    app.router.add_post("/api/validate-yaml", validate_yaml)
    app.router.add_get(f"/api/datasets/{repo}", info)
    app.router.add_get(f"/api/datasets/{repo}/revision/{{rev}}", info)
    app.router.add_get(f"/api/datasets/{repo}/tree/{{rev}}", tree)
    app.router.add_get(f"/api/datasets/{repo}/tree/{{rev}}/{{path:.+}}", tree)
    app.router.add_post(f"/api/datasets/{repo}/preupload/{{rev}}", preupload)
    app.router.add_post(f"/api/datasets/{repo}/commit/{{rev}}", commit)
    app.router.add_post(f"/datasets/{repo}.git/info/lfs/objects/batch", lfs_batch)
    app.router.add_put(f"/lfs-upload/{repo}/{{oid}}", lfs_upload)
    app.router.add_post(f"/lfs-verify/{repo}", lfs_verify)
    app.router.add_route("GET", f"/datasets/{repo}/resolve/{{rev}}/{{path:.+}}", resolve)
    app.router.add_route("HEAD", f"/datasets/{repo}/resolve/{{rev}}/{{path:.+}}", resolve)
    return app


@asynccontextmanager
async def serve_hub_commits(fake: FakeHubCommits, host: str = "127.0.0.1",
                            port: int = 0) -> AsyncIterator[str]:
    """Serve ``fake`` on this event loop; yields its URL (the ``endpoint`` to publish to)."""
    runner = web.AppRunner(make_app(fake), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = getattr(getattr(site, "_server", None), "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    try:
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


def main() -> None:  # pragma: no cover - a manual tool
    import json
    import os

    fake = FakeHubCommits()
    with fake.running() as url:
        print(json.dumps({"url": url, "pid": os.getpid()}), flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print(json.dumps(fake.counters()), flush=True)


if __name__ == "__main__":
    main()
