"""Rebuild dynogen's vendored copy of LiteLLM's model price map.

    .venv/bin/python scripts/refresh_prices.py                    # the latest litellm wheel
    .venv/bin/python scripts/refresh_prices.py --version 1.110.2  # a given release
    .venv/bin/python scripts/refresh_prices.py --wheel litellm-1.110.2-....whl
    .venv/bin/python scripts/refresh_prices.py --json model_prices_and_context_window.json

Without ``--wheel`` or ``--json`` it runs ``pip download --no-deps litellm`` into a
temporary folder and reads ``litellm/model_prices_and_context_window_backup.json``
from the wheel (litellm is never installed, and dynogen never imports it). It
keeps what dynogen prices with, for the models it can call (``mode`` chat,
completion or embedding, with an input price): input, output, cache read, cache
write and Batch prices, converted exactly (decimal arithmetic) from dollars per
token to dollars per 1M tokens, dynogen's unit, with the mode and LiteLLM's
provider. A cache-write price of 0 beside a positive input price is recorded as
absent (billed at the input price): LiteLLM writes 0 where it has no figure,
and dynogen never under-bills. The output records the source (wheel, version, sha256 of the original
JSON) and the date; ``dynogen/data/litellm/NOTICE`` beside it carries LiteLLM's
licence (MIT). Review the diff before committing: prices that moved are what changed.

Standard library only, so it runs from any Python 3.11+.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "dynogen" / "data" / "litellm" / "model_prices.json"
MEMBER = "litellm/model_prices_and_context_window_backup.json"
FORMAT = 1  # dynogen.execute.price_map reads this version of the layout
MODES = ("chat", "completion", "embedding")
# Output column -> LiteLLM field (dollars per token); then the two text columns.
PRICE_COLUMNS = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cached_input": "cache_read_input_token_cost",
    "cache_write": "cache_creation_input_token_cost",
    "batch_input": "input_cost_per_token_batches",
    "batch_output": "output_cost_per_token_batches",
    "batch_cache_write": "cache_creation_input_token_cost_batches",
}
COLUMNS = (*PRICE_COLUMNS, "mode", "provider")


def per_million(value: Any) -> Decimal | None:
    """Dollars per token (a JSON number) -> dollars per 1M tokens, exactly; None if absent
    or not a non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    d = Decimal(repr(value)).scaleb(6)
    if not d.is_finite() or d < 0:
        return None
    return d.normalize()


def trim(data: dict[str, Any]) -> tuple[dict[str, list[Any]], dict[str, int], int]:
    """The rows dynogen keeps, counts of what was left out and why, and how many zero
    cache-write prices were recorded as absent."""
    rows: dict[str, list[Any]] = {}
    left: dict[str, int] = {}
    zero_writes = 0
    for key, entry in sorted(data.items()):
        if not isinstance(entry, dict) or key == "sample_spec":
            left["not_a_model"] = left.get("not_a_model", 0) + 1
            continue
        mode = entry.get("mode")
        if mode not in MODES:
            left["other_mode"] = left.get("other_mode", 0) + 1
            continue
        prices = {col: per_million(entry.get(src)) for col, src in PRICE_COLUMNS.items()}
        if prices["cache_write"] == 0 and prices["input"]:
            prices["cache_write"] = None  # LiteLLM's 0 for "no figure": never under-bill
            zero_writes += 1
        if prices["output"] is None and mode == "embedding":
            prices["output"] = Decimal(0)  # embeddings have no output tokens
        if prices["input"] is None or prices["output"] is None:
            left["no_token_price"] = left.get("no_token_price", 0) + 1
            continue
        provider = entry.get("litellm_provider")
        rows[key] = [*prices.values(), mode, provider if isinstance(provider, str) else ""]
    return rows, left, zero_writes


def _number(d: Decimal | None) -> str:
    if d is None:
        return "null"
    text = format(d, "f")
    return text[:-2] if text.endswith(".0") else text


def render(rows: dict[str, list[Any]], source: dict[str, Any]) -> str:
    """The vendored file: a header, then one model per line (diffs read model by model)."""
    head = {
        "_about": (
            "LiteLLM's model price map, trimmed to what dynogen prices with; USD per 1M "
            "tokens. Built by scripts/refresh_prices.py; do not edit by hand (override with "
            "--prices FILE). Licence: MIT, see NOTICE beside this file. dynogen's hand-checked "
            "table (prices.json) wins over this map."),
        "_source": source,
        "format": FORMAT,
        "columns": list(COLUMNS),
    }
    lines = ["{"]
    lines += [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
    lines.append('"models": {')
    body = []
    for key, row in rows.items():
        cells = [_number(c) for c in row[:len(PRICE_COLUMNS)]]
        cells += [json.dumps(c, ensure_ascii=False) for c in row[len(PRICE_COLUMNS):]]
        body.append(f"{json.dumps(key, ensure_ascii=False)}: [{', '.join(cells)}]")
    lines.append(",\n".join(body))
    lines += ["}", "}"]
    return "\n".join(lines) + "\n"


def from_wheel(wheel: Path) -> tuple[bytes, dict[str, Any]]:
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(MEMBER)
    version = wheel.name.split("-")[1] if wheel.name.count("-") >= 2 else ""
    return raw, {"wheel": wheel.name, "version": version, "file": MEMBER}


def download(version: str | None) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="dynogen-litellm-"))
    spec = f"litellm=={version}" if version else "litellm"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                    ":all:", "--quiet", spec, "-d", str(dest)], check=True)
    wheels = sorted(dest.glob("litellm-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download left no litellm wheel in {dest}")
    return wheels[-1]


def refresh(raw: bytes, source: dict[str, Any], out: Path, date: str) -> dict[str, Any]:
    """Write the trimmed map of ``raw`` (LiteLLM's JSON) to ``out``; returns a summary."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise SystemExit("the price map is not a JSON object")
    rows, left, zero_writes = trim(data)
    source = {**source, "sha256": hashlib.sha256(raw).hexdigest(), "date": date,
              "models": len(rows), "left_out": dict(sorted(left.items())),
              "zero_cache_write_as_absent": zero_writes}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(rows, source), "utf-8")
    tmp.replace(out)
    return source


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    got = ap.add_mutually_exclusive_group()
    got.add_argument("--json", type=Path, help="a model_prices_and_context_window.json to read")
    got.add_argument("--wheel", type=Path, help="a litellm wheel to read it from")
    got.add_argument("--version", help="the litellm release to download (default: latest)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    ap.add_argument("--date", default=dt.date.today().isoformat(),
                    help="the date to record (default today, YYYY-MM-DD)")
    args = ap.parse_args(argv)
    dt.date.fromisoformat(args.date)  # refuse a malformed date before writing anything
    if args.json is not None:
        raw = args.json.read_bytes()
        source: dict[str, Any] = {"file": args.json.name}
    else:
        raw, source = from_wheel(args.wheel if args.wheel is not None else download(args.version))
    summary = refresh(raw, source, args.out, args.date)
    print(f"{args.out}: {summary['models']} models from {summary.get('wheel') or summary['file']}"
          f" (sha256 {summary['sha256'][:12]}, {summary['date']}); left out "
          + ", ".join(f"{k} {v}" for k, v in summary["left_out"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
