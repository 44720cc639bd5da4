"""Peer (a): the ``openai`` SDK's AsyncOpenAI under an asyncio.Semaphore.

The way most people hand-roll it: one task per request, a semaphore for
concurrency, the SDK's default retries (2, with its own backoff that honours
``retry-after``), no notion of RPM or TPM. Run in the peers' venv::

    bench/.venv-peers/bin/python bench/peers/openai_sdk.py --requests R.jsonl --out O.jsonl \\
        --base-url http://127.0.0.1:PORT/v1 --concurrency 64

Writes one ``{"custom_id", "ok", "error"}`` line per request to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

__all__ = ["main"]


async def _run(args: argparse.Namespace) -> dict[str, int]:
    import openai

    client = openai.AsyncOpenAI(base_url=args.base_url, api_key="sk-bench")
    sem = asyncio.Semaphore(args.concurrency)
    counts = {"ok": 0, "failed": 0}

    with open(args.requests, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]

    out = open(args.out, "w", encoding="utf-8")  # noqa: SIM115 -- closed below

    async def one(line: dict) -> None:
        async with sem:
            try:
                resp = await client.chat.completions.create(**line["body"])
                _ = resp.choices[0].message.content
                rec = {"custom_id": line["custom_id"], "ok": True, "error": None}
                counts["ok"] += 1
            except (openai.OpenAIError, AttributeError, TypeError, ValueError) as e:
                # AttributeError: a 200 whose body is not JSON comes back from the SDK as a str.
                rec = {"custom_id": line["custom_id"], "ok": False, "error": type(e).__name__}
                counts["failed"] += 1
        out.write(json.dumps(rec) + "\n")

    try:
        await asyncio.gather(*(one(line) for line in lines))
    finally:
        out.close()
        await client.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--base-url", required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rpm", type=float, default=None, help="ignored: this way knows no limits")
    p.add_argument("--tpm", type=float, default=None, help="ignored: this way knows no limits")
    args = p.parse_args(argv)
    counts = asyncio.run(_run(args))
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
