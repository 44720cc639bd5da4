"""Peer (c): LiteLLM's ``Router`` with the deployment's RPM/TPM, under a semaphore.

The Router is LiteLLM's answer to "many requests, one rate-limited
deployment": ``rpm``/``tpm`` on the deployment, ``num_retries`` with its own
backoff, ``acompletion`` for asyncio. Run in the peers' venv::

    bench/.venv-peers/bin/python bench/peers/litellm_peer.py --requests R.jsonl --out O.jsonl \\
        --base-url http://127.0.0.1:PORT/v1 --rpm 600 --tpm 10000000 --concurrency 64

Each request is the workload's body, sent unchanged (``response_format`` included).
Writes one ``{"custom_id", "ok", "error"}`` line per request to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

__all__ = ["main"]


async def _run(args: argparse.Namespace) -> dict[str, int]:
    import litellm
    from litellm import Router

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    params: dict = {"model": "openai/gpt-4o-mini", "api_base": args.base_url,
                    "api_key": "sk-bench"}
    if args.rpm:
        params["rpm"] = int(args.rpm)
    if args.tpm:
        params["tpm"] = int(args.tpm)
    router = Router(model_list=[{"model_name": "bench", "litellm_params": params}],
                    num_retries=args.retries)
    sem = asyncio.Semaphore(args.concurrency)
    counts = {"ok": 0, "failed": 0}
    with open(args.requests, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    out = open(args.out, "w", encoding="utf-8")  # noqa: SIM115 -- closed below

    async def one(line: dict) -> None:
        body = dict(line["body"])
        body.pop("model", None)
        async with sem:
            try:
                resp = await router.acompletion(model="bench", **body)
                _ = resp.choices[0].message.content
                rec = {"custom_id": line["custom_id"], "ok": True, "error": None}
                counts["ok"] += 1
            except Exception as e:  # noqa: BLE001 -- any failure counts as a lost request
                rec = {"custom_id": line["custom_id"], "ok": False, "error": type(e).__name__}
                counts["failed"] += 1
        out.write(json.dumps(rec) + "\n")

    try:
        await asyncio.gather(*(one(line) for line in lines))
    finally:
        out.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--base-url", required=True)
    p.add_argument("--rpm", type=float, default=None)
    p.add_argument("--tpm", type=float, default=None)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--retries", type=int, default=3)
    args = p.parse_args(argv)
    counts = asyncio.run(_run(args))
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
