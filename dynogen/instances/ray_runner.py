"""The sharded build's steps on a Ray cluster, through Ray Data.

``RayRunner`` joins the cluster at ``address`` (``ray.init(address=...)``), or
starts a local Ray instance when there is none; either way each step is a Ray
Data ``map`` over its specs, one block per spec, so Ray spreads pieces and
partitions over every node's CPUs and streams the results back as they finish.

What crosses to the workers is the spec (paths, offsets, the unit's features
and labels) and nothing else: no environment variables travel in the runtime
environment, so ``HF_TOKEN`` stays where the user put it (a Hub unit's worker
reads its own node's environment). Paths must be valid on every node: the run
directory and local dataset folders on a filesystem all nodes mount.

Ray is an optional extra (``pip install 'dynogen[ray]'``); without it this
module says so in one line.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import orjson

from dynogen.errors import ConfigError

__all__ = ["RayRunner"]


def _call(fn: Callable[[dict[str, Any]], dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
    return {"result": orjson.dumps(fn(orjson.loads(row["spec"]))).decode()}


class RayRunner:
    """A Ray cluster to run the sharded build's steps on; ``close`` leaves a cluster it
    joined running and stops one it started."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--engine ray needs Ray: pip install 'dynogen[ray]'") from None
        self.address = address
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR,
                              "log_to_driver": False, "ignore_reinit_error": True}
        if address is None and num_cpus is not None:
            kw["num_cpus"] = num_cpus
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise ConfigError(f"could not start or join {where}: {e}. Check --ray-address "
                              "(host:port of the head's GCS, or 'auto')") from None
        from ray.data import DataContext

        # Ray Data logs a line per step and a hint about its progress bars; ours say it
        for name in ("ray.data._internal.progress",
                     "ray.data._internal.execution.streaming_executor"):
            logging.getLogger(name).setLevel(logging.ERROR)
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        self._ray = ray

    def nodes(self) -> int:
        """Live nodes in the cluster."""
        nodes: list[dict[str, Any]] = self._ray.nodes()  # type: ignore[no-untyped-call]
        return sum(1 for n in nodes if n.get("Alive"))

    def map(self, fn: Callable[[dict[str, Any]], dict[str, Any]],
            specs: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if not specs:
            return
        import ray.data

        items = [{"spec": orjson.dumps(s).decode()} for s in specs]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        for row in ds.map(functools.partial(_call, fn)).iter_rows():
            yield orjson.loads(row["result"])

    def close(self) -> None:
        self._ray.shutdown()

    def __enter__(self) -> RayRunner:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
