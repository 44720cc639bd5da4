"""Batch input files under the caps, result lines read safely, the ledger's per-line billing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from dynogen.errors import BudgetExceeded
from dynogen.execute.batch_files import (
    Caps,
    InputFile,
    custom_id_of,
    iter_input_lines,
    key_of,
    parse_result_line,
    split_lines,
)
from dynogen.execute.ledger import Ledger
from dynogen.execute.prices import Price
from dynogen.store.cache import request_key

BODY = b'{"model":"m","messages":[{"role":"user","content":"hi \\u00e9"}],"max_tokens":9}'


def test_a_line_carries_the_body_bytes_unchanged_and_maps_back_by_custom_id(
        tmp_path: Path) -> None:
    key = request_key(BODY)
    f = InputFile(tmp_path / "input-000001.jsonl", "/chat/completions", Caps())
    line = f.line(key, BODY)
    f.add(key, line, 12, 9)
    f.close()
    obj = orjson.loads(line)
    assert obj == {"custom_id": custom_id_of(key), "method": "POST",
                   "url": "/v1/chat/completions", "body": orjson.loads(BODY)}
    assert BODY in line and key_of(obj["custom_id"]) == key
    assert list(iter_input_lines(tmp_path / "input-000001.jsonl")) == [(key, line, 12, 9)]
    assert not list(tmp_path.glob("*.tmp"))
    assert key_of("req-1") is None and key_of("dg-" + "zz" * 16) is None and key_of(7) is None


@pytest.mark.parametrize("caps,full_after", [
    (Caps(requests=3), 3),
    (Caps(bytes=600), 3),
    (Caps(tokens=50), 4),
])
def test_a_file_is_full_at_the_first_cap_reached(tmp_path: Path, caps: Caps,
                                                  full_after: int) -> None:
    f = InputFile(tmp_path / "x.jsonl", "/chat/completions", caps)
    n = 0
    while True:
        body = BODY.replace(b"hi", f"hi{n}".encode())
        key = request_key(body)
        line = f.line(key, body)
        assert 180 <= len(line) <= 190  # three fit in 600 bytes, four do not
        if not f.fits(line, 12):
            break
        f.add(key, line, 12, 9)
        n += 1
    assert n == full_after
    f.discard()
    assert not list(tmp_path.iterdir())


def _ok(key: bytes, status: int = 200, body: object = None) -> bytes:
    return orjson.dumps({"id": "batch_req_1", "custom_id": custom_id_of(key), "response": {
        "status_code": status, "request_id": "r",
        "body": body if body is not None else {"choices": [], "usage": {"prompt_tokens": 1}}},
        "error": None})


def test_result_lines_parse_into_answers_failures_or_counted_reasons() -> None:
    key = request_key(BODY)
    ok = parse_result_line(_ok(key))
    assert not isinstance(ok, str) and ok.status == 200 and ok.key == key
    assert ok.usage == {"prompt_tokens": 1} and ok.body is not None
    bad = parse_result_line(_ok(key, 500, {"error": {"code": None, "type": "server_error"}}))
    assert not isinstance(bad, str) and bad.body is None and bad.reason == "http_500_server_error"
    expired = parse_result_line(orjson.dumps({"custom_id": custom_id_of(key), "response": None,
                                              "error": {"code": "batch_expired"}}))
    assert not isinstance(expired, str) and expired.reason == "batch_expired"
    assert parse_result_line(b"{torn") == "malformed_line"
    assert parse_result_line(b"[1, 2]") == "malformed_line"
    assert parse_result_line(b'{"custom_id": "someone-else"}') == "unknown_custom_id"
    assert parse_result_line(orjson.dumps({"custom_id": custom_id_of(key)})) == "malformed_line"


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def test_lines_are_split_across_chunks_and_an_oversized_one_is_skipped() -> None:
    big = b"x" * 50
    got = [x async for x in split_lines(_chunks(b"ab", b"c\nde", b"f\n", big[:20], big[20:],
                                                b"\n\nlast"), max_line=30)]
    assert got == [b"abc", b"def", None, b"last"]
    tail = [x async for x in split_lines(_chunks(b"ok\n", big), max_line=30)]
    assert tail == [b"ok", None]


def test_a_batch_reservation_is_billed_line_by_line_and_never_crosses_the_budget() -> None:
    price = Price(input=1.0, cached_input=1.0, output=2.0, batch_input=0.5, batch_output=1.0)
    ledger = Ledger(price, budget_usd=1.0, batch=True)
    group = ledger.reserve(prompt_tokens=1_000_000, max_tokens=500_000)  # $1.00 worst case
    with pytest.raises(BudgetExceeded):
        ledger.reserve(1, 0)
    for _ in range(2):
        share = ledger.split(group, 100_000, 50_000)
        assert ledger.settle(share, {"prompt_tokens": 100_000, "completion_tokens": 50_000}) \
            == pytest.approx(0.1)
    assert ledger.spent == pytest.approx(0.2) and ledger.reserved == pytest.approx(0.8)
    ledger.release(group)
    assert ledger.reserved == 0 and ledger.remaining == pytest.approx(0.8)
    forced = ledger.reserve(2_000_000, 0, force=True)  # a batch an earlier session submitted
    assert ledger.remaining is not None and ledger.remaining < 0
    ledger.release(forced)
    assert ledger.totals()["requests"]["in_flight"] == 0
