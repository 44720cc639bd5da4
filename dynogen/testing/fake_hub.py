"""A fake Hugging Face Hub and dataset viewer, for tests and benchmarks.

It serves, from recorded or generated answers, the HTTP endpoints the real
``huggingface_hub`` client and dynogen's Hub source call:

* ``GET /api/datasets`` (search, filter, author, sort, limit, expand; pages
  linked with a ``Link: <…>; rel="next"`` header, as the Hub does);
* ``GET /datasets/{id}/resolve/{revision}/{file}`` (cards; errors carry the
  Hub's ``X-Error-Code`` header, which ``huggingface_hub`` maps to its errors);
* the viewer under ``/viewer``: ``/is-valid``, ``/info``, ``/first-rows``, ``/rows``;
* rows (``add_rows``): the Parquet conversion under
  ``/datasets/{id}/resolve/refs%2Fconvert%2Fparquet/...`` with ``Range`` support,
  ``/api/datasets/{id}/parquet[/{config}[/{split}]]`` listing its files, and
  ``/rows`` pages (see ``fake_hub_rows``).

Point ``HF_ENDPOINT`` (or ``HubOptions.endpoint``) at ``server.url`` and the
viewer URL at ``server.viewer_url``. It records every request (path, query,
whether an ``Authorization`` header came, never its value), counts requests in
flight and their peak, can delay answers (``latency``), answer a path with
some 503/429 first (``transient``) or a share of all calls with a 429 or 503
and a ``Retry-After`` (``fault_rate``), enforce per-bucket quotas with the
Hub's ``RateLimit`` headers (``limits``), and gate datasets (``gate``: 401
without a token, 403 with one that has no access, 200 with one that has), so
retries, limits, access and concurrency are observable.

    fake = FakeHub.from_recorded("tests/fixtures/hub")
    with fake.running() as server:            # its own thread and event loop
        source = HubSource(options=HubOptions(endpoint=server.url,
                                              viewer_url=server.viewer_url))
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from dynogen.testing.fake_hub_rows import HubRows, RateWindows, bucket_of, parse_range

__all__ = ["FakeHub", "HubServer", "HubRequest", "make_hub_app", "serve_hub", "synthetic_hub"]

Answer = dict[str, Any]  # {"status": int, "headers": {...}, "body": JSON or str}


@dataclass(frozen=True, slots=True)
class HubRequest:
    path: str
    query: tuple[tuple[str, str], ...]
    authorized: bool
    bearer_sha: str = ""  # never the token: a short digest, to check which token came
    range: str = ""  # the Range header, if any


@dataclass
class FakeHub:
    """Recorded answers and a request log. ``listing`` holds raw ``/api/datasets`` entries."""

    listing: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # "id/filename" -> text
    file_errors: dict[str, Answer] = field(default_factory=dict)
    viewer: dict[str, Any] = field(default_factory=dict)  # "is-valid|id", "first-rows|id|cfg|split"
    transient: dict[str, list[int]] = field(default_factory=dict)  # request key -> statuses first
    page_size: int = 100
    latency: float = 0.0
    requests: list[HubRequest] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    data: HubRows = field(default_factory=HubRows)
    limits: RateWindows = field(default_factory=RateWindows)
    fault_rate: float = 0.0  # share of calls answered 429 or 503 (with Retry-After) at random
    fault_retry_after: float = 1.0
    fault_seed: int = 0
    faults: Counter[int] = field(default_factory=Counter)
    gated: dict[str, set[str]] = field(default_factory=dict)  # repo -> digests of granted tokens
    _rng: random.Random | None = None

    def add_rows(self, repo: str, config: str, split: str, rows: list[dict[str, Any]],
                 features: dict[str, Any], **kw: Any) -> None:
        """Rows of ``repo``'s ``config``/``split`` (``datasets`` features as a dict); ``kw``:
        ``row_group_size``, ``shard_rows``, ``partial`` (see ``HubRows.add``)."""
        self.data.add(repo, config, split, rows, features, **kw)

    def gate(self, repo: str, *granted: str) -> None:
        """Make ``repo`` gated; the tokens in ``granted`` have been given access."""
        self.gated[repo] = {_digest(f"Bearer {t}") for t in granted}

    @classmethod
    def from_recorded(cls, root: str | Path) -> FakeHub:
        """Answers recorded as files: list_datasets.json, responses.json, viewer.json, files/."""
        root = Path(root)
        listing = orjson.loads((root / "list_datasets.json").read_bytes())["response"]
        errors = orjson.loads((root / "responses.json").read_bytes())
        viewer_file = root / "viewer.json"
        viewer = orjson.loads(viewer_file.read_bytes()) if viewer_file.is_file() else {}
        files = {
            str(p.relative_to(root / "files")): p.read_text("utf-8")
            for p in sorted((root / "files").rglob("*"))
            if p.is_file()
        }
        return cls(
            listing=listing,
            files=files,
            file_errors={k: v for k, v in errors.items() if not k.startswith("_")},
            viewer={k: v for k, v in viewer.items() if not k.startswith("_")},
        )

    def calls(self, prefix: str = "") -> list[HubRequest]:
        return [r for r in self.requests if r.path.startswith(prefix)]

    @contextmanager
    def running(self, host: str = "127.0.0.1") -> Iterator[HubServer]:
        """Serve on a background thread's event loop (for synchronous callers)."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        box: dict[str, Any] = {}

        async def main() -> None:
            stop = asyncio.Event()
            box["stop"] = stop
            async with serve_hub(self, host) as server:
                box["server"] = server
                ready.set()
                await stop.wait()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True,
                                  name="fake-hub")
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake Hub did not start")
        try:
            yield box["server"]
        finally:
            loop.call_soon_threadsafe(box["stop"].set)
            thread.join(10)
            loop.close()


@dataclass(frozen=True, slots=True)
class HubServer:
    url: str

    @property
    def viewer_url(self) -> str:
        return f"{self.url}/viewer"


def _response(answer: Answer) -> web.Response:
    body = answer.get("body")
    headers = dict(answer.get("headers") or {})
    if isinstance(body, str) and answer.get("text"):
        return web.Response(status=int(answer.get("status", 200)), text=body, headers=headers)
    return web.Response(status=int(answer.get("status", 200)), body=orjson.dumps(body),
                        headers=headers, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}),
                        content_type="application/json",
                        headers={"X-Error-Code": code, "X-Error-Message": message})


def _digest(auth: str) -> str:
    return sha256(auth.encode()).hexdigest()[:12] if auth else ""


def _repo_of(request: web.Request) -> str:
    """The dataset a request is about (``""`` for the listing)."""
    path = request.path
    if path.startswith("/viewer/"):
        return request.query.get("dataset", "")
    for prefix, sep in (("/datasets/", "/resolve/"), ("/api/datasets/", "/parquet")):
        if path.startswith(prefix) and sep in path:
            return path[len(prefix):].partition(sep)[0]
    return ""


def make_hub_app(fake: FakeHub) -> web.Application:
    async def middleware_record(request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        fake.requests.append(HubRequest(
            request.path, tuple(request.query.items()), bool(auth), _digest(auth),
            request.headers.get("Range", "")))

    def refuse(request: web.Request) -> web.Response | None:
        """The answer to a call refused before its handler: a fault, or no access."""
        key = _request_key(request)
        queued = fake.transient.get(key)
        from_queue = bool(queued)
        status = queued.pop(0) if queued else None
        if status is None and fake.fault_rate:
            if fake._rng is None:
                fake._rng = random.Random(fake.fault_seed)
            if fake._rng.random() < fake.fault_rate:
                status = 429 if fake._rng.random() < 0.5 else 503
                fake.faults[status] += 1
        if status is not None:
            response = _error(status, "", "rate limited" if status == 429 else "try again")
            # as the Hub does on 429 and 503; the queued ones ask for no wait at all
            response.headers["Retry-After"] = "0" if from_queue else str(fake.fault_retry_after)
            return response
        repo = _repo_of(request)
        if repo in fake.gated:
            auth = request.headers.get("Authorization", "")
            if _digest(auth) not in fake.gated[repo]:
                viewer = request.path.startswith("/viewer/")
                if not auth:
                    return _error(401, "ExternalUnauthenticatedError" if viewer else "GatedRepo",
                                  f"Access to dataset {repo} is restricted. You must be "
                                  "authenticated to access it.")
                return _error(404 if viewer else 403,
                              "ExternalAuthenticatedError" if viewer else "GatedRepo",
                              f"Access to dataset {repo} is restricted and you are not in the "
                              "authorized list.")
        return None

    @web.middleware
    async def around(request: web.Request, handler: Any) -> web.StreamResponse:
        await middleware_record(request)
        fake.in_flight += 1
        fake.peak_in_flight = max(fake.peak_in_flight, fake.in_flight)
        try:
            if fake.latency:
                await asyncio.sleep(fake.latency)
            within, limit_headers = fake.limits.admit(bucket_of(request.path))
            response: web.StreamResponse
            if not within:
                response = _error(429, "", "You have exceeded the rate limit of this bucket")
            else:
                response = refuse(request) or await handler(request)
            for k, v in limit_headers.items():
                response.headers.setdefault(k, v)
            fake.statuses[response.status] += 1
            return response
        finally:
            fake.in_flight -= 1

    async def list_datasets(request: web.Request) -> web.Response:
        q = request.query
        items = fake.listing
        for term in q.getall("search", []):
            items = [d for d in items if term.lower() in str(d["id"]).lower()]
        for tag in q.getall("filter", []):
            items = [d for d in items if tag in (d.get("tags") or [])]
        if "author" in q:
            items = [d for d in items if str(d["id"]).startswith(q["author"] + "/")]
        sort = q.get("sort")
        if sort in ("downloads", "lastModified"):
            items = sorted(items, key=lambda d: d.get(sort) or 0, reverse=True)
        if "limit" in q:
            items = items[: int(q["limit"])]
        start = int(q.get("cursor", "0"))
        page = items[start : start + fake.page_size]
        expand = set(q.getall("expand", []))
        out = [{k: v for k, v in d.items() if k in ("id", "_id") or k in expand} for d in page]
        headers = {}
        if start + fake.page_size < len(items):
            params = [(k, v) for k, v in q.items() if k != "cursor"]
            params.append(("cursor", str(start + fake.page_size)))
            link = f"{request.url.origin()}/api/datasets?{urlencode(params)}"
            headers["Link"] = f'<{link}>; rel="next"'
        return web.Response(body=orjson.dumps(out), headers=headers,
                            content_type="application/json")

    def known(repo: str) -> bool:
        return repo in fake.data.repos() or any(d["id"] == repo for d in fake.listing)

    async def resolve(request: web.Request) -> web.StreamResponse:
        repo, _, rest = request.match_info["tail"].partition("/resolve/")
        if not known(repo):
            return _error(404, "RepoNotFound", "Repository not found")
        for branch in ("refs/convert/parquet/", "refs%2Fconvert%2Fparquet/"):
            if rest.startswith(branch):
                return parquet_file(request, repo, rest[len(branch):])
        _revision, _, filename = rest.partition("/")
        key = f"{repo}/{filename}"
        if key in fake.file_errors:
            return _response(fake.file_errors[key])
        text = fake.files.get(key)
        if text is None:
            return _error(404, "EntryNotFound", f"{filename} does not exist on \"main\"")
        return web.Response(text=text, content_type="text/plain")

    def parquet_file(request: web.Request, repo: str, path: str) -> web.Response:
        data = fake.data.parquet(repo, path)
        if data is None:
            return _error(404, "EntryNotFound", f"{path} is not in refs/convert/parquet")
        wanted = request.headers.get("Range")
        if wanted is None:
            return web.Response(body=data, content_type="application/octet-stream")
        span = parse_range(wanted, len(data))
        if span is None:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        start, end = span
        return web.Response(status=206, body=data[start:end],
                            content_type="application/octet-stream",
                            headers={"Content-Range": f"bytes {start}-{end - 1}/{len(data)}",
                                     "Accept-Ranges": "bytes"})

    async def parquet_api(request: web.Request) -> web.StreamResponse:
        """``/api/datasets/{id}/parquet[/{config}[/{split}[/{n}.parquet]]]``."""
        repo, _, rest = request.match_info["tail"].partition("/parquet")
        if not known(repo):
            return _error(404, "RepoNotFound", "Repository not found")
        parts = [p for p in rest.split("/") if p]
        listing = fake.data.listing(repo)
        if not listing:
            return _error(404, "", "No parquet conversion for this dataset")
        base = f"{request.url.origin()}/api/datasets/{repo}/parquet"

        def urls(config: str, split: str) -> list[str]:
            return [f"{base}/{config}/{split}/{i}.parquet"
                    for i in range(len(listing[config][split]))]

        if not parts:
            return web.json_response({c: {s: urls(c, s) for s in splits}
                                      for c, splits in listing.items()})
        config = parts[0]
        if config not in listing:
            return _error(404, "", f"config {config} not found")
        if len(parts) == 1:
            return web.json_response({s: urls(config, s) for s in listing[config]})
        split = parts[1]
        if split not in listing[config]:
            return _error(404, "", f"split {split} not found")
        if len(parts) == 2:
            return web.json_response(urls(config, split))
        index = int(parts[2].split(".")[0])
        files = listing[config][split]
        if not 0 <= index < len(files):
            return _error(404, "EntryNotFound", "no such file")
        raise web.HTTPFound(f"{request.url.origin()}/datasets/{repo}/resolve/"
                            f"refs%2Fconvert%2Fparquet/{files[index]}")

    async def rows(request: web.Request) -> web.Response:
        q = request.query
        page = fake.data.rows_page(q.get("dataset", ""), q.get("config", ""), q.get("split", ""),
                                   int(q.get("offset", "0")), int(q.get("length", "100")))
        if page is None:
            return _error(404, "ResponseNotFound", "Not found.")
        return web.json_response(page)

    def viewer_answer(key: str) -> web.Response:
        answer = fake.viewer.get(key)
        if answer is None:
            return _error(404, "ResponseNotFound", "Not found.")
        if isinstance(answer, dict) and "status" in answer and "body" in answer:
            return _response(answer)
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def is_valid(request: web.Request) -> web.Response:
        return viewer_answer(f"is-valid|{request.query.get('dataset', '')}")

    async def info(request: web.Request) -> web.Response:
        return viewer_answer(f"info|{request.query.get('dataset', '')}")

    async def first_rows(request: web.Request) -> web.Response:
        q = request.query
        return viewer_answer(
            f"first-rows|{q.get('dataset', '')}|{q.get('config', '')}|{q.get('split', '')}")

    app = web.Application(middlewares=[around])
    app.router.add_get("/api/datasets", list_datasets)
    app.router.add_get(r"/api/datasets/{tail:.+}", parquet_api)
    app.router.add_get(r"/datasets/{tail:.+}", resolve)
    app.router.add_get("/viewer/is-valid", is_valid)
    app.router.add_get("/viewer/info", info)
    app.router.add_get("/viewer/first-rows", first_rows)
    app.router.add_get("/viewer/rows", rows)
    return app


def _request_key(request: web.Request) -> str:
    """``transient`` keys: ``README.md|id``, ``is-valid|id``, ``info|id``, ``first-rows|id|c|s``."""
    q = request.query
    if request.path.startswith("/datasets/"):
        repo, _, rest = request.path[len("/datasets/"):].partition("/resolve/")
        return f"{rest.partition('/')[2]}|{repo}"
    if request.path.startswith("/viewer/"):
        name = request.path[len("/viewer/"):]
        if name == "first-rows":
            return f"first-rows|{q.get('dataset', '')}|{q.get('config', '')}|{q.get('split', '')}"
        return f"{name}|{q.get('dataset', '')}"
    return request.path


@asynccontextmanager
async def serve_hub(fake: FakeHub, host: str = "127.0.0.1",
                    port: int = 0) -> AsyncIterator[HubServer]:
    runner = web.AppRunner(make_hub_app(fake), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    try:
        yield HubServer(f"http://{host}:{bound}")
    finally:
        await runner.cleanup()


# ----------------------------------------------------------------------- synthetic
_KINDS = (
    ("ok", 60), ("multi", 8), ("gated", 5), ("private", 3), ("disabled", 3), ("script", 4),
    ("invalid", 5), ("copy", 5), ("flaky", 4), ("nocard", 3),
)


def synthetic_hub(n: int, *, seed: int = 0, page_size: int = 100,
                  start: datetime | None = None) -> tuple[FakeHub, dict[str, str]]:
    """A Hub of ``n`` generated datasets of every kind, and each one's expected outcome.

    Kinds: plain text datasets, multi-config ones, gated, private, disabled,
    script-only, viewer-invalid, near-copies of an earlier dataset (another
    owner, the same card and features), datasets whose calls first answer
    503/429, and datasets with no card. The outcome is ``unit`` or a skip reason.
    """
    rng = random.Random(seed)
    weights = [w for _, w in _KINDS]
    names = [k for k, _ in _KINDS]
    start = start or datetime(2026, 11, 1, tzinfo=UTC)
    fake = FakeHub(page_size=page_size)
    expected: dict[str, str] = {}
    originals: list[str] = []
    for i in range(n):
        kind = rng.choices(names, weights)[0]
        if kind == "copy" and not originals:
            kind = "ok"
        owner = f"org{i % 17}"
        repo = f"{owner}/set-{i:05d}"
        modified = (start - timedelta(hours=i)).isoformat().replace("+00:00", "Z")
        entry: dict[str, Any] = {
            "_id": f"{i:024x}", "id": repo, "private": kind == "private",
            "gated": "manual" if kind == "gated" else False, "disabled": kind == "disabled",
            "downloads": 10_000 - i, "lastModified": modified,
            "tags": ["task_categories:text-classification", "language:en", "region:us"],
            "siblings": [{"rfilename": "README.md"}, {"rfilename": "data/train.parquet"}],
        }
        if kind == "script":
            entry["siblings"] = [{"rfilename": "README.md"}, {"rfilename": f"set-{i:05d}.py"}]
        if kind == "nocard":
            entry["siblings"] = [{"rfilename": "data/train.parquet"}]
        fake.listing.append(entry)
        source = rng.choice(originals) if kind == "copy" else repo
        labels = ["negative", "positive"] if int(source[-5:]) % 2 else ["no", "yes", "maybe"]
        configs = ["default"] if kind != "multi" else ["en", "fr", "de"]
        if kind != "nocard":
            text = (f"---\nlicense: cc-by-4.0\n---\n# Set {source[-5:]}\n\n## Dataset Summary\n\n"
                    f"Short reviews of item {source[-5:]} labelled by sentiment, collected for "
                    f"classification experiments number {source[-5:]}.\n")
            fake.files[f"{repo}/README.md"] = text
        if kind == "invalid":
            fake.viewer[f"is-valid|{repo}"] = {"preview": False, "viewer": False, "search": False,
                                               "filter": False, "statistics": False}
        else:
            fake.viewer[f"is-valid|{repo}"] = {"preview": True, "viewer": True, "search": True,
                                               "filter": True, "statistics": True}
        features = {
            "text": {"dtype": "string", "_type": "Value"},
            "label": {"names": labels, "_type": "ClassLabel"},
        }
        info = {
            cfg: {"description": "", "license": "", "features": features, "config_name": cfg,
                  "splits": {"train": {"name": "train", "num_examples": 100},
                             "test": {"name": "test", "num_examples": 20}}}
            for cfg in configs
        }
        fake.viewer[f"info|{repo}"] = {"dataset_info": info, "pending": [], "failed": [],
                                       "partial": False}
        for cfg in configs:
            fake.viewer[f"first-rows|{repo}|{cfg}|train"] = {
                "dataset": repo, "config": cfg, "split": "train",
                "features": [{"feature_idx": 0, "name": "text",
                              "type": {"dtype": "string", "_type": "Value"}},
                             {"feature_idx": 1, "name": "label",
                              "type": {"names": labels, "_type": "ClassLabel"}}],
                "rows": [{"row_idx": j, "row": {"text": f"row {j} of {repo}", "label": j % 2},
                          "truncated_cells": []} for j in range(5)],
                "truncated": False,
            }
        if kind == "flaky":
            fake.transient[f"is-valid|{repo}"] = [503]
            fake.transient[f"info|{repo}"] = [429]
        outcome = {
            "gated": "gated", "private": "private", "disabled": "disabled",
            "script": "script_only", "invalid": "viewer_invalid", "copy": "near_copy",
        }.get(kind, "unit")
        if kind == "nocard":
            outcome = "unit"  # features from /info alone; no description: still a unit
        expected[repo] = outcome
        if kind in ("ok", "flaky"):
            originals.append(repo)
    return fake, expected
