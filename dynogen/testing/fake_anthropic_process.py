"""The fake Anthropic server in a process of its own, for benchmarks.

Its CPU then does not compete with the client's event loop, and the bench can
kill and restart clients while it keeps its record::

    with start_fake_anthropic(rpm=3000, latency_median=0.5) as fake:
        ...  # fake.url, fake.stats(), fake.batches(processing_seconds=4), fake.set_limits(...)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from dynogen.testing.child import ChildProcess, fake_main, start_child
from dynogen.testing.fake_answers import add_answer_time_args, answer_time_of
from dynogen.testing.fake_anthropic import FakeAnthropic, serve

__all__ = ["FakeAnthropicProcess", "main", "start_fake_anthropic"]

_JSON = "application/json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dynogen.testing.fake_anthropic_process",
                                description="A fake Anthropic API for benchmarks.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--model", default="claude-sonnet-4-5")
    for name in ("rpm", "itpm", "otpm"):
        p.add_argument(f"--{name}", type=float, default=None)
    p.add_argument("--burst-seconds", type=float, default=1.0)
    add_answer_time_args(p)
    p.add_argument("--api-key", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overload-rate", type=float, default=0.0)
    p.add_argument("--prices", default=None,
                   help="input,output,cache_write,cache_read in dollars per 1M tokens")
    p.add_argument("--processing-seconds", type=float, default=60.0,
                   help="how long a Message Batch takes")
    return p


def _fake_from_args(args: argparse.Namespace) -> FakeAnthropic:
    latency, out = answer_time_of(args)
    prices = None
    if args.prices:
        vals = [float(x) for x in args.prices.split(",")]
        prices = dict(zip(("input", "output", "cache_write", "cache_read"), vals, strict=False))
    fake = FakeAnthropic(
        model=args.model, rpm=args.rpm, itpm=args.itpm, otpm=args.otpm,
        burst_seconds=args.burst_seconds,
        latency=latency,
        output_tokens=out, api_key=args.api_key, keep_history=False, seed=args.seed,
        overload_rate=args.overload_rate, prices=prices)
    fake.batches.configure(processing_seconds=args.processing_seconds)
    return fake


def main(argv: Sequence[str] | None = None) -> int:
    return fake_main(argv, _parser(), _fake_from_args, serve)


class FakeAnthropicProcess(ChildProcess):
    """A fake in a child process (``start_fake_anthropic``); stops on ``with`` exit.

    >>> with start_fake_anthropic(rpm=3000) as fake:
    ...     fake.batches(processing_seconds=4.0)    # batch settings; the counts come back
    ...     fake.stats()["bill"]                     # what the server billed
    """

    def call(self, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        return self._call(path, payload)

    def batches(self, **settings: Any) -> dict[str, Any]:
        """Change batch settings (``reset=True`` forgets every batch); returns the counts."""
        return dict(self._call("/admin/batches", settings) if settings
                    else self._call("/admin/batches"))


def start_fake_anthropic(*, ready_timeout: float = 90.0, **options: Any) -> FakeAnthropicProcess:
    """``python -m dynogen.testing.fake_anthropic_process`` with ``options`` as flags (``rpm=600``
    → ``--rpm 600``, ``output_tokens=(100, 300)`` → ``--output-tokens 100:300``)."""
    return FakeAnthropicProcess(*start_child("dynogen.testing.fake_anthropic_process", options,
                                             what="fake Anthropic server",
                                             ready_timeout=ready_timeout))


if __name__ == "__main__":
    sys.exit(main())
