"""Batch API files: writing input JSONL under the API's caps, reading result lines safely.

Input lines are assembled from the request's exact body bytes (never re-encoded),
so a batch sends byte-for-byte what the online path would, and its ``custom_id``
is the hex of the request's cache key: an answer maps back to its request by id
alone, whatever order the output file comes in, and a restart recognises a
request it already submitted by the same id.

Results are untrusted input from a remote file that can be large: they are read
as a stream, split into lines no longer than ``max_line`` (an oversized line is
skipped to its end and reported, never held), and each line parses into a
``ResultLine`` or into a counted reason, never an exception.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dynogen.dedup import HashSet

__all__ = ["FILE_BYTES_CAP", "FILE_REQUESTS_CAP", "MAX_RESULT_LINE", "Caps", "InputFile",
           "ResultLine", "batch_url", "custom_id_of", "iter_input_lines", "key_hash",
           "key_of", "parse_result_line", "split_lines"]

FILE_REQUESTS_CAP = 50_000
# OpenAI's cap is 200 MB; a margin keeps a file that lands exactly on it from being refused.
FILE_BYTES_CAP = 190 * 1024 * 1024
MAX_RESULT_LINE = 64 * 1024 * 1024
_PREFIX = "dg-"
_TOKENS = struct.Struct("<II")
_U32 = 2**32 - 1


def custom_id_of(key: bytes) -> str:
    """The ``custom_id`` of the request whose cache key is ``key``."""
    return _PREFIX + key.hex()


def key_of(custom_id: Any) -> bytes | None:
    """The cache key a ``custom_id`` stands for, or ``None`` when it is not one of ours."""
    if not isinstance(custom_id, str) or not custom_id.startswith(_PREFIX) or len(
            custom_id) != len(_PREFIX) + 32:
        return None
    try:
        return bytes.fromhex(custom_id[len(_PREFIX):])
    except ValueError:
        return None


def key_hash(key: bytes) -> int:
    """The 64-bit form of a key kept in ``HashSet``s (8 bytes a request at rest)."""
    return int.from_bytes(key[:8], "little")


def batch_url(endpoint: str) -> str:
    """``/chat/completions`` → ``/v1/chat/completions`` (what a batch line and batch name)."""
    return endpoint if endpoint.startswith("/v1/") else "/v1" + endpoint


@dataclass(frozen=True, slots=True)
class Caps:
    """When an input file is full: requests, bytes, and prompt tokens (the enqueued cap)."""

    requests: int = FILE_REQUESTS_CAP
    bytes: int = FILE_BYTES_CAP
    tokens: int | None = None


class InputFile:
    """One input file being written under ``path``; ``close`` makes it durable.

    Written to ``path.tmp`` and renamed on close, so a file that exists under its
    final name is whole; a kill mid-write leaves only a ``.tmp`` to discard. A
    sidecar (``path.tokens``) holds each line's prompt tokens and ``max_tokens``
    (8 bytes a line), so a resubmitted line is reserved at its own worst case.
    """

    def __init__(self, path: Path, endpoint: str, caps: Caps) -> None:
        self.path = path
        self.endpoint = endpoint
        self.caps = caps
        self._tmp = path.with_name(path.name + ".tmp")
        self._tok_path = path.with_name(path.name + ".tokens")
        self._tok_tmp = path.with_name(path.name + ".tokens.tmp")
        self._f = self._tmp.open("wb")
        self._tok = self._tok_tmp.open("wb")
        self.keys = HashSet()
        self.requests = 0
        self.bytes = 0
        self.prompt_tokens = 0
        self.max_tokens = 0
        self._url = batch_url(endpoint).encode()

    def line(self, key: bytes, body: bytes) -> bytes:
        return (b'{"custom_id":"' + custom_id_of(key).encode() + b'","method":"POST","url":"'
                + self._url + b'","body":' + body + b"}\n")

    def fits(self, line: bytes, prompt_tokens: int) -> bool:
        """Whether one more line keeps the file under every cap (an empty file takes any)."""
        if self.requests == 0:
            return True
        c = self.caps
        return (self.requests + 1 <= c.requests and self.bytes + len(line) <= c.bytes
                and (c.tokens is None or self.prompt_tokens + prompt_tokens <= c.tokens))

    def add(self, key: bytes, line: bytes, prompt_tokens: int, max_tokens: int) -> None:
        self._f.write(line)
        self._tok.write(_TOKENS.pack(min(prompt_tokens, _U32), min(max_tokens, _U32)))
        self.keys.add(key_hash(key))
        self.requests += 1
        self.bytes += len(line)
        self.prompt_tokens += prompt_tokens
        self.max_tokens += max_tokens

    def close(self) -> None:
        for f in (self._tok, self._f):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        os.replace(self._tok_tmp, self._tok_path)
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        for f, p in ((self._f, self._tmp), (self._tok, self._tok_tmp)):
            f.close()
            p.unlink(missing_ok=True)


def iter_input_lines(path: Path) -> Iterator[tuple[bytes, bytes, int, int]]:
    """(key, whole line, prompt tokens, max_tokens) of a local input file; lines that are
    not ours are skipped (token counts are 0 when the sidecar is missing)."""
    tok_path = path.with_name(path.name + ".tokens")
    with path.open("rb") as f, contextlib.ExitStack() as stack:
        tok = stack.enter_context(tok_path.open("rb")) if tok_path.exists() else None
        for raw in f:
            pair = tok.read(_TOKENS.size) if tok is not None else b""
            pt, mt = _TOKENS.unpack(pair) if len(pair) == _TOKENS.size else (0, 0)
            # The custom_id is the first field by construction: no JSON parse needed.
            start = raw.find(b'"custom_id":"')
            if start < 0:
                continue
            start += len(b'"custom_id":"')
            end = raw.find(b'"', start)
            key = key_of(raw[start:end].decode("ascii", "replace"))
            if key is not None:
                yield key, raw if raw.endswith(b"\n") else raw + b"\n", pt, mt


@dataclass(frozen=True, slots=True)
class ResultLine:
    """One line of an output or error file, reduced to what the executor needs.

    ``body`` is the answer's JSON bytes when ``status == 200``; otherwise ``reason``
    says why the request has no answer (``batch_expired``, ``http_500``, ...).
    """

    key: bytes
    status: int | None
    body: bytes | None
    usage: dict[str, Any] | None
    reason: str | None


def parse_result_line(raw: bytes) -> ResultLine | str:
    """A result line, or the reason it is unusable (``malformed_line``, ``unknown_custom_id``)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "malformed_line"
    if not isinstance(obj, dict):
        return "malformed_line"
    key = key_of(obj.get("custom_id"))
    if key is None:
        return "unknown_custom_id"
    resp, err = obj.get("response"), obj.get("error")
    if isinstance(resp, dict) and isinstance(resp.get("status_code"), int):
        status = resp["status_code"]
        body = resp.get("body")
        if status == 200 and isinstance(body, dict):
            usage = body.get("usage")
            return ResultLine(key, 200, orjson.dumps(body),
                              usage if isinstance(usage, dict) else None, None)
        code = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = body["error"].get("code") or body["error"].get("type")
        return ResultLine(key, status, None, None, f"http_{status}" + (
            f"_{code}" if isinstance(code, str) and code and status != 200 else ""))
    if isinstance(err, dict):
        code = err.get("code")
        return ResultLine(key, None, None, None,
                          code if isinstance(code, str) and code else "batch_error")
    return "malformed_line"


async def split_lines(chunks: AsyncIterable[bytes],
                      max_line: int = MAX_RESULT_LINE) -> AsyncIterator[bytes | None]:
    """Lines of a byte stream; ``None`` stands for a line longer than ``max_line``
    (its bytes are dropped as they arrive, so memory stays under ``max_line``)."""
    buf = bytearray()
    skipping = False
    async for chunk in chunks:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                if not skipping:
                    buf += chunk[start:]
                    if len(buf) > max_line:
                        buf.clear()
                        skipping = True
                break
            if skipping:
                skipping = False
                yield None
            else:
                buf += chunk[start:nl]
                if len(buf) > max_line:
                    yield None
                elif buf.strip():
                    yield bytes(buf)
                buf.clear()
            start = nl + 1
    if skipping:
        yield None
    elif buf.strip():
        yield bytes(buf)
