"""Peer (b): bespokelabs-curator in online mode, given the same RPM/TPM limits.

Run in the peers' venv with the environment ``bench.peers.peer_env`` builds
(telemetry off, cache off, offline Hub, local LiteLLM cost map, tiktoken cache
seeded from bpe-openai's files)::

    bench/.venv-peers/bin/python bench/peers/curator_peer.py --requests R.jsonl --out O.jsonl \\
        --base-url http://127.0.0.1:PORT/v1 --rpm 600 --tpm 10000000

Curator takes one ``response_format`` (a pydantic model) and one set of
generation parameters per ``LLM``, so each request carries the workload's
messages, ``temperature``, ``max_tokens`` and ``seed``, but not its per-unit
JSON schema; the fake counts prompt tokens from the messages only, so the
rate-limit cost of each request is unchanged.

Writes one ``{"custom_id", "ok", "error"}`` line per request to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--base-url", required=True)
    p.add_argument("--rpm", type=float, default=None)
    p.add_argument("--tpm", type=float, default=None)
    p.add_argument("--concurrency", type=int, default=None, help="ignored: curator paces itself")
    args = p.parse_args(argv)

    from bespokelabs import curator

    with open(args.requests, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    first = lines[0]["body"] if lines else {}
    rows = [{"custom_id": ln["custom_id"], "messages": json.dumps(ln["body"]["messages"])}
            for ln in lines]

    class Prompter(curator.LLM):
        def prompt(self, row: dict) -> list:
            return json.loads(row["messages"])

        def parse(self, row: dict, response: str) -> dict:
            return {"custom_id": row["custom_id"], "ok": bool(response)}

    backend_params: dict = {"base_url": args.base_url, "api_key": "sk-bench",
                            "require_all_responses": False}
    if args.rpm:
        backend_params["max_requests_per_minute"] = int(args.rpm)
    if args.tpm:
        backend_params["max_tokens_per_minute"] = int(args.tpm)
    gen = {k: first[k] for k in ("temperature", "max_tokens", "seed") if k in first}
    llm = Prompter(model_name=first.get("model", "gpt-4o-mini"), backend="openai",
                   generation_params=gen, backend_params=backend_params)
    with tempfile.TemporaryDirectory() as work:
        result = llm(rows, working_dir=work)
        dataset = result.dataset if hasattr(result, "dataset") else result
        answered = {r["custom_id"] for r in dataset}
    with open(args.out, "w", encoding="utf-8") as out:
        for ln in lines:
            ok = ln["custom_id"] in answered
            out.write(json.dumps({"custom_id": ln["custom_id"], "ok": ok,
                                  "error": None if ok else "missing"}) + "\n")
    print(json.dumps({"ok": len(answered), "failed": len(lines) - len(answered)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
