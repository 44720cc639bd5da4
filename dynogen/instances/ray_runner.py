"""The sharded build's steps on a Ray cluster, through Ray Data.

``RayRunner`` joins the cluster at ``address`` (``ray.init(address=...)``), or
starts a local Ray instance when there is none (``address="local"``: never a
cluster some earlier ``ray start`` left on this machine; ``auto`` joins that
one); either way each step is a Ray Data ``map`` over its specs, one block per
spec, so Ray spreads pieces and partitions over every node's CPUs and streams
the results back as they finish.

Joining checks first that something answers at ``host:port``: Ray itself would
retry an address where nothing listens for many minutes. A cluster started with
token authentication (Ray's default) wants the driver to say so:
``RAY_AUTH_MODE=token`` and the cluster's token (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``); without them the error says so.

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
import socket
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import orjson

from dynogen.errors import ConfigError

__all__ = ["RayRunner"]


def _call(fn: Callable[[dict[str, Any]], dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
    return {"result": orjson.dumps(fn(orjson.loads(row["spec"]))).decode()}


CONNECT_TIMEOUT = 5.0  # seconds to wait for the head's GCS port to answer


def _check_reachable(address: str) -> None:
    """``ConfigError`` in one line when nothing answers at ``host:port`` (``ray.init``
    would retry for many minutes); other forms (``auto``, ``ray://``) go to Ray as given."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return
    host = host.strip("[]") or "127.0.0.1"
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"could not join the Ray cluster at {address}: nothing answers "
                          f"there ({reason}). Check --ray-address (host:port of the head's "
                          "GCS, or 'auto')") from None


def _why(err: BaseException) -> str:
    """What went wrong, from the whole chain (Ray wraps the cause in a bare
    "Failed to connect"), in one line."""
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(x) for x in chain).lower()
    if "authentication token" in text or "invalidauthtoken" in text:
        mode = os.environ.get("RAY_AUTH_MODE") or "unset"
        return (f"the cluster wants its authentication token (RAY_AUTH_MODE is {mode}): "
                "set RAY_AUTH_MODE=token and give the token in RAY_AUTH_TOKEN, a file named "
                "by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token")
    return " ".join(str(err).split())


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
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        if address is not None:
            _check_reachable(address)
            # a port that answers but is no GCS: Ray's defaults retry for ~14 minutes
            # (20 tries of 30 s); one try of 10 s still joins a busy head (the user's own
            # settings win)
            os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "1")
            os.environ.setdefault("RAY_py_gcs_connect_timeout_s", "10")
        from ray.exceptions import AuthenticationError

        try:
            ray.init(address=address or "local", **kw)
        except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as e:
            raise ConfigError(f"could not start or join {where}: {_why(e)}. Check "
                              "--ray-address (host:port of the head's GCS, or 'auto')") from None
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
