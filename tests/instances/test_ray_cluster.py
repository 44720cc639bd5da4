"""``dynogen build --engine ray`` on a real Ray cluster started here.

A head and one worker node run as separate processes on this machine (``ray start
--block``, one CPU each, with token authentication: ``RAY_AUTH_MODE=token`` and a
token file in ``RAY_AUTH_TOKEN_PATH``, which a joining driver needs too); the
builds are ``dynogen build`` subprocesses that join it with ``--ray-address``, as
a user's would. They give the same set of instances as the
single-process build; a build killed (SIGKILL) midway and run again writes only
the pieces that were missing; ``HF_TOKEN`` reaches neither Ray's runtime
environment, its workers' environment nor its logs; with no ``--ray-address`` a
local Ray instance starts; an address where nothing answers fails in one line.

What the cluster did is read where Ray keeps it, without a driver of our own: the
GCS tables through ``GcsClient`` (nodes, and each job's driver pid and runtime
environment) in a short subprocess, the worker processes under ``/proc``, and the
workers' logs (``:job_id:`` and ``:task_name:`` lines name what each ran, the core
worker's log names its node).

The tests share one cluster and run in file order; nothing else here starts Ray.
The cluster is stopped through its own ``ray start`` processes (never ``ray stop``,
which stops every Ray instance on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from dynogen.commands.build import _saved_config, build
from dynogen.instances.sharded import ShardedBuild
from dynogen.store.rundir import RunDir
from tests.helpers import REPO, run_env, under_ci, wait_until
from tests.instances.rowsets import instance_set, make_run

if under_ci():
    import ray  # noqa: F401  (CI installs dynogen[ray]: a missing Ray fails here)
else:
    pytest.importorskip("ray", reason="Ray is an extra: pip install 'dynogen[ray]'")

RAY_CLI = Path(sys.executable).with_name("ray")
TOKEN = "hf_dynogen_secret_" + secrets.token_hex(8)  # must never reach the cluster
SLOW = 240.0  # seconds a whole build may take on a loaded 2-core machine
TASK = ":task_name:Map("  # the line a Ray Data map task's worker logs as it starts
AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")

# The GCS's tables, read as a client (no driver: no job, no workers): nodes, and jobs
# with their driver's pid and runtime environment. Private to Ray, but stable since 2.x.
PROBE = r"""
import json, sys
from ray._raylet import GcsClient
from ray.core.generated import gcs_pb2
gcs = GcsClient(address=sys.argv[1])
alive = gcs_pb2.GcsNodeInfo.GcsNodeState.Value("ALIVE")
nodes = [{"id": n.node_id.hex(), "alive": n.state == alive, "session_dir": n.session_dir}
         for n in gcs.get_all_node_info(timeout=10).values()]
jobs = [{"id": j.job_id.hex(), "driver_pid": j.driver_pid, "dead": j.is_dead,
         "runtime_env": j.config.runtime_env_info.serialized_runtime_env, "text": str(j)}
        for j in gcs.get_all_job_info(timeout=10).values()]
print(json.dumps({"nodes": nodes, "jobs": jobs}))
"""


# ------------------------------------------------------------------ processes


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a live process; ``None`` once it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    state = fields[0].decode()
    return (int(fields[1]), state) if state not in ("Z", "X") else None


def _title(pid: int) -> str:
    """A process's title (Ray names its workers ``ray::IDLE``, ``ray::Map(_call)``...)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.split(b"\0", 1)[0].decode(errors="replace").strip()


def _descendants(roots: list[int]) -> set[int]:
    """Every live process under ``roots`` (Ray's workers are in process groups of their
    own, so only the parent links find them all)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


# ------------------------------------------------------------------ the cluster


@dataclass
class Cluster:
    root: Path  # short: Ray's Unix sockets live under it (a path may hold ~107 bytes)
    port: int
    env: dict[str, str]  # what a driver needs to join: the token, and no HF_* settings
    starters: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def gcs(self) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-c", PROBE, self.address], env=self.env,
                             capture_output=True, timeout=60)
        if out.returncode:
            raise AssertionError("could not read the GCS: "
                                 + out.stderr.decode(errors="replace")[-2000:])
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def alive_nodes(self) -> list[dict[str, Any]]:
        self.check_running()
        return [n for n in self.gcs()["nodes"] if n["alive"]]

    def job_of(self, driver_pid: int) -> dict[str, Any]:
        jobs = [j for j in self.gcs()["jobs"] if j["driver_pid"] == driver_pid]
        assert len(jobs) == 1, f"no single job for driver {driver_pid}: {jobs}"
        return jobs[0]

    def logs(self) -> Path:
        dirs = {n["session_dir"] for n in self.gcs()["nodes"]}
        assert len(dirs) == 1, dirs  # one machine: both nodes log into the head's session
        return Path(dirs.pop()) / "logs"

    def check_running(self) -> None:
        for i, p in enumerate(self.starters):
            if p.poll() is not None:
                log = (self.root / f"start-{i}.log").read_text(errors="replace")
                raise AssertionError(f"`ray start` exited ({p.returncode}):\n{log[-3000:]}")

    def workers(self) -> dict[int, str]:
        """The cluster's worker processes (pid: title), the agents left out."""
        pids = _descendants([p.pid for p in self.starters])
        titles = {pid: _title(pid) for pid in pids}
        return {pid: t for pid, t in titles.items()
                if t.startswith("ray::") and not t.startswith(AGENTS)}

    def busy(self) -> dict[int, str]:
        """Workers that run, or could still run, a job's task (detached actors Ray Data
        leaves behind, ``ray::_StatsActor`` and the like, do not count)."""
        return {pid: t for pid, t in self.workers().items()
                if t == "ray::IDLE" or t.startswith("ray::Map")}

    def start(self, *args: str) -> None:
        """One node, its ``ray start`` in the foreground (``--block``) until we stop it."""
        with (self.root / f"start-{len(self.starters)}.log").open("wb") as log:
            self.starters.append(subprocess.Popen(
                [str(RAY_CLI), "start", "--block", "--num-cpus=1",
                 "--object-store-memory=100000000", "--disable-usage-stats", *args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def stop(self) -> None:
        """Each node's ``ray start`` stops its own processes on SIGTERM; what is left a
        minute later (a process of ours, by pid) is killed."""
        ours = _descendants([p.pid for p in self.starters])
        for p in reversed(self.starters):
            if p.poll() is None:
                p.terminate()
        try:
            wait_until(lambda: all(p.poll() is not None for p in self.starters)
                       and not any(_stat(pid) for pid in ours),
                       "the cluster's processes to exit", timeout=60, interval=0.1)
        finally:
            for pid in [*(p.pid for p in self.starters), *ours]:
                if _stat(pid) is not None:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            for p in self.starters:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)


def _ray_env(root: Path, **extra: str) -> dict[str, str]:
    """``run_env`` with no Ray settings of the caller's (``RAY_ADDRESS``...) but ``extra``,
    and this checkout first on the path (of the cluster's workers too)."""
    env = {k: v for k, v in run_env(root).items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return {**env, **extra}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    token = root / "ray-token"
    token.write_text(secrets.token_hex(32))
    env = _ray_env(root, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                   # stop at once when told (no 30 s drain), and start no idle workers
                   # before a job asks: every worker then belongs to a job
                   RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
                   RAY_prestart_worker_first_driver="0")
    c = Cluster(root, _free_port(), env)
    try:
        c.start("--head", f"--port={c.port}", f"--temp-dir={root / 'ray'}",
                "--include-dashboard=false")
        wait_until(lambda: c.check_running() or _answers(c.port), "the head's GCS port",
                   timeout=120, interval=0.1)
        c.start(f"--address={c.address}")
        wait_until(lambda: len(c.alive_nodes()) == 2, "two alive nodes", timeout=120,
                   interval=0.2)
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ builds


def _dynogen(run: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "dynogen", "build", str(run), "--quiet",
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[bytes], timeout: float = SLOW) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of a build; one still running after ``timeout`` s is
    killed and fails the test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        tail = err.decode(errors="replace")[-3000:]
        raise AssertionError(f"still running after {timeout:g} s:\n{tail}") from None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _ok(proc: subprocess.Popen[bytes]) -> str:
    code, out, err = _finish(proc)
    assert code == 0, f"exit {code}\n{out}\n{err[-4000:]}"
    return out


def _pair(root: Path, **kw: Any) -> tuple[Path, Path]:
    """The same run twice: one built here by the single-process engine, one to build on Ray."""
    run = make_run(root / "src", **kw)
    local, on_ray = root / "local", root / "ray"
    shutil.copytree(run, local)
    shutil.copytree(run, on_ray)
    build(local, quiet=True, handle_signals=False)
    return local, on_ray


def _session(run: Path) -> dict[str, Any]:
    session: dict[str, Any] = orjson.loads((run / "report.json").read_bytes())["session"]
    return session


def _tasks_by_node(logs: Path, job: str) -> Counter[str]:
    """Map tasks of ``job`` each node's workers started, from the workers' logs."""
    per_node: Counter[str] = Counter()
    for out in logs.glob("worker-*.out"):
        current, n = None, 0
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith(":job_id:"):
                current = line.removeprefix(":job_id:")
            elif line.startswith(TASK) and current == job:
                n += 1
        if n:
            parts = out.stem.split("-")  # worker-<worker id>-<job id>-<pid>
            core = logs / f"python-core-worker-{parts[1]}_{parts[-1]}.log"
            found = re.search(r"node_id=([0-9a-f]+)", core.read_text(errors="replace"))
            assert found, f"no node in {core}"
            per_node[found.group(1)] += n
    return per_node


@dataclass
class Built:
    """One build on the cluster with ``HF_TOKEN`` in the driver's environment."""

    local: Path
    run: Path
    out: str
    job: dict[str, Any]
    nodes: list[str]
    environs: dict[int, tuple[str, bytes]]  # the cluster's workers seen during the build


@pytest.fixture(scope="module")
def built(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Built:
    local, run = _pair(tmp_path_factory.mktemp("cluster-build"))
    nodes = [n["id"] for n in cluster.alive_nodes()]
    environs: dict[int, tuple[str, bytes]] = {}

    def look() -> bool:  # every worker's environment, as long as the build runs
        for pid, title in cluster.workers().items():
            with contextlib.suppress(OSError):
                environs.setdefault(pid, (title, Path(f"/proc/{pid}/environ").read_bytes()))
        return proc.poll() is not None

    proc = _dynogen(run, {**cluster.env, "HF_TOKEN": TOKEN}, "--engine", "ray",
                    "--ray-address", cluster.address)
    wait_until(look, "the build on the cluster", timeout=SLOW, interval=0.05)
    out = _ok(proc)
    return Built(local, run, out, cluster.job_of(proc.pid), nodes, environs)


# ------------------------------------------------------------------ tests


def test_cluster_build_equals_one_process_and_uses_both_nodes(cluster: Cluster,
                                                              built: Built) -> None:
    assert "built" in built.out and (built.run / "instances" / "part-00000.parquet").exists()
    assert instance_set(built.run) == instance_set(built.local) != []
    assert len(built.nodes) == 2 and len(cluster.alive_nodes()) == 2
    written = _session(built.run)["written"]
    # Ray Data spreads small tasks over the nodes (its SPREAD strategy), so each node's
    # worker ran some: one task per piece and per partition, nothing run twice
    per_node = _tasks_by_node(cluster.logs(), built.job["id"])
    assert set(per_node) == set(built.nodes), per_node
    assert sum(per_node.values()) == written["candidates"] + written["partitions"], per_node


def test_hf_token_never_reaches_the_cluster(cluster: Cluster, built: Built) -> None:
    token = TOKEN.encode()
    # the job asked for no runtime environment: nothing to carry a variable to the workers
    assert json.loads(built.job["runtime_env"] or "{}").get("env_vars") is None
    assert TOKEN not in built.job["text"]
    # every worker the build had, its pieces' and partitions' too, ran without the token
    tasks = [t for t, _ in built.environs.values() if t.startswith("ray::Map") or t == "ray::IDLE"]
    assert tasks, f"saw no worker of the build: {built.environs.keys()}"
    assert not [t for t, env in built.environs.values() if token in env]
    # and nothing Ray wrote (session logs, GCS files) or the build wrote holds it
    leaks = []
    for folder in (cluster.root, built.run):
        for path in folder.rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink() and token in path.read_bytes():
                    leaks.append(path)
    assert not leaks


def _shards(run: Path) -> dict[str, tuple[int, int]]:
    """Every whole candidate and partition file (temp names left out): (inode, mtime)."""
    folder = run / "instances"
    out = {}
    for p in folder.rglob("*.parquet"):
        with contextlib.suppress(OSError):
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_ino, st.st_mtime_ns)
    return out


def test_killed_build_resumes_and_writes_no_shard_twice(cluster: Cluster,
                                                        tmp_path: Path) -> None:
    # many small files: a piece is one file's row groups, so 90-odd pieces to cut into
    local, run = _pair(tmp_path, files=30, rows=12, row_group=4, rows_per_split="all")
    cfg = _saved_config(RunDir(run)).with_(quiet=True).validate()
    units, parts = ShardedBuild(cfg, RunDir(run), None).plan()  # type: ignore[arg-type]
    pieces = sum(len(u.specs) for u in units)
    assert pieces > 80

    candidates = run / "instances" / ".candidates"
    args = ("--engine", "ray", "--ray-address", cluster.address)
    first = _dynogen(run, cluster.env, *args)

    def some_pieces() -> bool:
        if first.poll() is not None:
            raise AssertionError(f"the build ended before it was killed: {_finish(first)}")
        return len(list(candidates.glob("*.parquet"))) >= 5

    wait_until(some_pieces, "some of the pieces", timeout=SLOW, interval=0.005)
    first.send_signal(signal.SIGKILL)
    first.wait()
    # The driver is gone: the GCS marks its job dead and the raylets kill the job's
    # workers. Until they are gone one could still finish a piece, so the files are
    # counted after that.
    wait_until(lambda: cluster.job_of(first.pid)["dead"], "the killed job to be dead",
               timeout=60, interval=0.2)
    wait_until(lambda: not cluster.busy(), "the killed job's workers to go", timeout=60,
               interval=0.05)
    assert len(cluster.alive_nodes()) == 2  # the cluster stays
    before = _shards(run)
    done = [k for k in before if k.startswith(".candidates/")]
    assert 0 < len(done) < pieces and len(done) == len(before)  # killed in phase 1

    second = _dynogen(run, cluster.env, *args)
    _ok(second)
    written = _session(run)["written"]
    # the second build wrote exactly the pieces that were missing, and every partition;
    # a SIGKILL mid-write leaves no torn file (each is renamed into place whole)
    assert written == {"candidates": pieces - len(done), "partitions": parts, "spoiled": 0}
    assert instance_set(run) == instance_set(local)
    assert not candidates.exists()  # every unit settled: the candidates are gone


def test_no_address_starts_a_local_instance(cluster: Cluster, tmp_path: Path) -> None:
    local, run = _pair(tmp_path)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
    try:
        # Ray's own default would join the cluster a `ray start` recorded here last;
        # without --ray-address the build must start an instance of its own instead
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(cluster.address)
        (tmp_path / "home").mkdir()
        env = _ray_env(tmp_path, RAY_TMPDIR=str(ray_tmp), HOME=str(tmp_path / "home"),
                       RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
        proc = _dynogen(run, env, "--engine", "ray")
        _ok(proc)
        assert instance_set(run) == instance_set(local) != []
        assert not [j for j in cluster.gcs()["jobs"] if j["driver_pid"] == proc.pid]
        assert list((ray_tmp / "ray").glob("session_*"))  # its own instance, here
        # and the instance it started is stopped with it
        wait_until(lambda: not _running_under(ray_tmp), "the local instance's processes "
                   "to exit", timeout=60, interval=0.1)
    finally:
        for pid in _running_under(ray_tmp):  # a test that failed: none of ours stays
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _running_under(folder: Path) -> list[int]:
    """Live processes that name ``folder`` on their command line (a Ray instance's
    GCS, raylet and helpers name their session folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _stat(int(entry.name)) is not None:
            with contextlib.suppress(OSError):
                if str(folder).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def test_nothing_at_the_address_fails_in_one_line(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    t0 = time.monotonic()
    code, out, err = _finish(_dynogen(run, _ray_env(tmp_path), "--engine", "ray",
                                      "--ray-address", "127.0.0.1:1"), timeout=60)
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("dynogen: error: could not join the Ray cluster at 127.0.0.1:1: "
                          "nothing answers there"), err
    assert time.monotonic() - t0 < 30  # Ray alone retries such an address for minutes


@pytest.mark.parametrize("mode", [None, "token"], ids=["no_auth_mode", "no_token"])
def test_missing_token_says_what_the_cluster_wants(cluster: Cluster, tmp_path: Path,
                                                   mode: str | None) -> None:
    run = make_run(tmp_path)
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    if mode:
        env["RAY_AUTH_MODE"] = mode  # and no token anywhere: not in a fresh home either
    (tmp_path / "home").mkdir()
    env["HOME"] = str(tmp_path / "home")
    env["RAY_gcs_server_port_wait_time_s"] = "1"  # Ray's retries, 20 s by default
    code, _, err = _finish(_dynogen(run, env, "--engine", "ray", "--ray-address",
                                    cluster.address), timeout=120)
    last = err.strip().splitlines()[-1]
    assert code != 0 and "Traceback" not in err, err
    assert last.startswith(f"dynogen: error: could not start or join the Ray cluster at "
                           f"{cluster.address}: the cluster wants its authentication token"), err
    assert "RAY_AUTH_MODE=token" in last
