"""The Batch API's HTTP side on the fake server: ``/v1/files``, ``/v1/batches`` and
``/admin/batches``.

``add_batch_routes(app, store)`` serves one ``FakeBatches`` on an aiohttp app
(``make_app`` calls it with the fake's own). Each handler reads the request,
asks the store, and writes OpenAI's JSON; a ``Refused`` from either becomes the
error answer. The API key is the store's fake's (``fake.api_key``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from dynogen.testing.fake_batch_objects import Refused, json_or_none, refusal
from dynogen.testing.fake_batches import FakeBatches

__all__ = ["add_batch_routes", "page"]

_JSON = "application/json"
_PURPOSES = ("batch", "fine-tune", "assistants", "user_data", "vision")


def page(items: list[dict[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """OpenAI's cursor page over ``items`` (already in listing order)."""
    try:
        limit = max(1, min(100, int(query.get("limit", "20"))))
    except ValueError:
        raise Refused(400, "Invalid 'limit': an integer from 1 to 100.", "invalid_value",
                      "limit") from None
    after = query.get("after")
    start = 0
    if after:
        ids = [it["id"] for it in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    data = items[start:start + limit]
    return {"object": "list", "data": data, "has_more": start + limit < len(items),
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


def add_batch_routes(app: web.Application, store: FakeBatches) -> None:
    """Serve ``store`` on ``app``: files, batches and the admin endpoints."""
    fake = store.fake

    def guard(handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            key = fake.api_key
            try:
                if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
                    raise Refused(401, "Incorrect API key provided. You can find your API key "
                                  "at https://platform.openai.com/account/api-keys.",
                                  "invalid_api_key")
                result: web.StreamResponse = await handler(request)
                return result
            except Refused as e:
                return web.Response(status=e.status, body=e.body, content_type=_JSON)
        return wrapped

    async def upload(request: web.Request) -> web.Response:
        if store.upload_error is not None:
            raise refusal(store.upload_error)
        if not request.content_type.startswith("multipart/"):
            raise Refused(400, "Uploads are multipart/form-data with 'file' and 'purpose'.")
        purpose, filename, data = None, "upload.jsonl", b""
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename = part.filename or filename
                chunks, size = [], 0
                while chunk := await part.read_chunk(1 << 20):
                    size += len(chunk)
                    if size > store.max_file_bytes:
                        raise Refused(400, f"File is larger than the {store.max_file_bytes:,}"
                                      "-byte limit for batch input.", "file_too_large", "file")
                    chunks.append(chunk)
                data = b"".join(chunks)
        if purpose is None:
            raise Refused(400, "Missing required parameter: 'purpose'.",
                          "missing_required_parameter", "purpose")
        if purpose not in _PURPOSES:
            raise Refused(400, f"Invalid value for 'purpose': '{purpose}'.", "invalid_value",
                          "purpose")
        if purpose == "batch" and not filename.endswith(".jsonl"):
            raise Refused(400, "Batch input files must be .jsonl.", "invalid_file_format",
                          "file")
        return _json(store.add_file(filename, purpose, data).obj())

    async def file_get(request: web.Request) -> web.Response:
        return _json(store.file(request.match_info["file_id"]).obj())

    async def file_list(request: web.Request) -> web.Response:
        items = [f.obj() for f in store.list_files(request.query.get("purpose"))]
        return _json(page(items, request.query))

    async def file_delete(request: web.Request) -> web.Response:
        f = store.delete_file(request.match_info["file_id"])
        return _json({"id": f.id, "object": "file", "deleted": True})

    async def file_content(request: web.Request) -> web.StreamResponse:
        f = store.file(request.match_info["file_id"])
        resp = web.StreamResponse(headers={"content-type": "application/octet-stream"})
        resp.content_length = len(f.data)
        await resp.prepare(request)
        view = memoryview(f.data)
        for start in range(0, len(f.data), 1 << 16):
            await resp.write(view[start:start + (1 << 16)])
        await resp.write_eof()
        return resp

    async def batch_create(request: web.Request) -> web.Response:
        auth = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        b = store.create_batch(json_or_none(await request.read()), auth)
        return _json(store.obj(b))

    async def batch_get(request: web.Request) -> web.Response:
        return _json(store.obj(store.retrieve(request.match_info["batch_id"])))

    async def batch_list(request: web.Request) -> web.Response:
        return _json(page([store.obj(b) for b in store.list_batches()], request.query))

    async def batch_cancel(request: web.Request) -> web.Response:
        return _json(store.obj(store.cancel(request.match_info["batch_id"])))

    async def admin_get(request: web.Request) -> web.Response:
        return _json(store.counts())

    async def admin_set(request: web.Request) -> web.Response:
        try:
            settings = orjson.loads(await request.read())
            if not isinstance(settings, dict):
                raise ValueError("send a JSON object of settings")
            if settings.pop("reset", False):
                store.reset()
            store.configure(**settings)
        except (orjson.JSONDecodeError, ValueError, TypeError) as e:
            raise Refused(400, str(e)) from None
        return _json(store.counts())

    r = app.router
    r.add_post("/v1/files", guard(upload))
    r.add_get("/v1/files", guard(file_list))
    r.add_get("/v1/files/{file_id}", guard(file_get))
    r.add_delete("/v1/files/{file_id}", guard(file_delete))
    r.add_get("/v1/files/{file_id}/content", guard(file_content))
    r.add_post("/v1/batches", guard(batch_create))
    r.add_get("/v1/batches", guard(batch_list))
    r.add_get("/v1/batches/{batch_id}", guard(batch_get))
    r.add_post("/v1/batches/{batch_id}/cancel", guard(batch_cancel))
    r.add_get("/admin/batches", guard(admin_get))
    r.add_post("/admin/batches", guard(admin_set))


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type=_JSON)
