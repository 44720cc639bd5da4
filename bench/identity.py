"""Behaviour identity: digests of what ``dynogen run`` writes, to compare two checkouts.

A behaviour-preserving redesign must leave ``tasks.jsonl``, ``instances.jsonl``
and the counts in ``report.json`` byte-identical. ``python -m bench.identity``
runs one checkout's ``dynogen run`` (``PYTHONPATH=<checkout>``, which wins over
the venv's editable install; checked, not assumed) over each dataset group in
``--mode online`` and ``--mode batch`` against the in-repo fake OpenAI server,
and writes one digest per (group, mode)::

    python -m bench.identity --checkout ../base --out before.json
    python -m bench.identity --checkout .       --out after.json
    python -m bench.identity --compare before.json after.json   # exit 1 on any difference

Why it is deterministic: the fake answers every request from a hash of its body
(no latency, faults or limits are switched on, so its seed draws nothing), its
state is reset before every run, and every run gets a fresh run directory and
``HF_HOME``. Only dynogen's own behaviour is left to vary.

The fake runs from ``--fake-checkout`` (default: the checkout being measured,
through its ``python -m dynogen.testing.fake_openai``), so each side needs no
more than its own tree; pass the same ``--fake-checkout`` to both sides to make
sure only dynogen differs if the redesign touches the fake. This script imports
nothing from dynogen: it talks to both programs over argv, files and HTTP.

What is compared (and fails): the exit code, sha256 and line counts of
``tasks.jsonl`` and ``instances.jsonl``, and ``report.json`` value by value with
its wall-clock fields removed (see ``TIME_KEY``) and run-specific strings (run
directory, fake URL, checkout path) replaced by placeholders; its ``config``
echo is a column of its own, so counts and settings are told apart. Listed but
not failing ("extra"): ``units.jsonl``, ``dropped_tasks.jsonl``,
``builds.jsonl`` (paths normalised) and the fake's own request counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["GROUPS", "MODES", "compare", "main", "measure"]

REPO = Path(__file__).resolve().parents[1]
CORPORA = (REPO.parent / "shared" / "hf-metadata-2022" / "datasets",
           Path("/work/shared/hf-metadata-2022/datasets"))
SHARED = ("--free", "--quiet")
# (source, flags). A source starting with "<checkout>/" is read from the checkout measured.
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "corpus": ("<corpus>", ()),  # the data policies as shipped (1,528 requests)
    # the engine over every unit (9,366 requests): prompts for far more cards
    "corpus-any": ("<corpus>", ("--licenses", "any", "--languages", "any", "--splits", "all")),
    "samples": ("samples", ()),
    # flags wired through the CLI, config and engine: what "options declared once" moves
    "samples-options": ("samples", ("--judge", "--heldout-fraction", "0.3", "--max-share", "0.5",
                                    "--max-tasks", "2", "--rows-per-split", "10", "--variants",
                                    "no_description", "--licenses", "any", "--splits", "all")),
    # the only fixture with rows on disk (tests/fixtures/hub needs the Hub, refused offline)
    "fixtures": ("<checkout>/tests/fixtures/hf/modern", ()),
}
MODES: dict[str, tuple[str, ...]] = {
    "online": ("--mode", "online"),
    # several input files (400 requests each) so batch splitting is exercised; a short
    # poll so compressed batches are noticed quickly (backoff starts at an eighth of it)
    "batch": ("--mode", "batch", "--poll-seconds", "0.5", "--batch-max-requests", "400"),
}
# The fake's Batch API compresses the 24 h window: seconds, set explicitly before every run
# so a changed default in either checkout's fake cannot change the timing.
FAKE_BATCH = {"validating": 0.02, "in_progress": 0.1, "finalizing": 0.02, "line_fail_rate": 0.0,
              "expire_every": 0, "fail_every": 0}
BAR_FILES = ("tasks.jsonl", "instances.jsonl")
EXTRA_FILES = ("units.jsonl", "dropped_tasks.jsonl", "builds.jsonl")
# Report keys that measure the clock, not behaviour (found by diffing repeated runs:
# session.wall_seconds, task_stage_seconds, requests_per_second). Settings under
# "config" (poll_seconds, request_timeout...) are constants and stay.
TIME_KEY = re.compile(r"(seconds|per_second|_ms|elapsed|duration|timestamp|_at)$")


def sha_lines(data: bytes) -> dict[str, Any]:
    """What a file is, in three numbers: enough to say equal or not, and by how much."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "lines": data.count(b"\n"),
            "bytes": len(data)}


def normalise(text: str, subs: dict[str, str]) -> str:
    """Replace run-specific strings (longest first, so a run dir inside the work dir wins)."""
    for old in sorted(subs, key=len, reverse=True):
        text = text.replace(old, subs[old])
    return text


def strip_times(doc: Any, path: str = "") -> tuple[Any, list[str]]:
    """``doc`` without clock-dependent keys (outside ``config``), and the paths removed."""
    if not isinstance(doc, dict):
        return doc, []
    out: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in doc.items():
        here = f"{path}.{key}" if path else key
        if TIME_KEY.search(key) and not here.startswith("config."):
            dropped.append(here)
            continue
        out[key], sub = strip_times(value, here)
        dropped += sub
    return out, dropped


def flatten(doc: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted paths to leaves, so a difference is named down to the field."""
    if isinstance(doc, dict) and doc:
        for key, value in doc.items():
            yield from flatten(value, f"{path}.{key}" if path else str(key))
    else:
        yield path, doc


class Fake:
    """The fake OpenAI server in its own process, started from a checkout's own tree."""

    def __init__(self, python: str, checkout: Path, env: dict[str, str], log: Path) -> None:
        self._log = log.open("wb")
        # cwd outside every checkout: "python -m" puts the cwd before PYTHONPATH on sys.path
        self.proc = subprocess.Popen(
            [python, "-m", "dynogen.testing.fake_openai", "--port", "0", "--seed", "7"],
            env={**env, "PYTHONPATH": str(checkout)}, cwd=log.parent, stdout=subprocess.PIPE,
            stderr=self._log, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            line = self.proc.stdout.readline() if sel.select(120) else b""
        if not line:
            self.stop()
            tail = log.read_text("utf-8", "replace").strip().splitlines()[-1:]
            raise RuntimeError(f"the fake did not start from {checkout}: {tail}; pass "
                               "--fake-checkout with a checkout that has "
                               "dynogen/testing/fake_openai.py")
        self.url: str = json.loads(line)["url"]
        self.root = self.url.removesuffix("/v1")

    def call(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.root + path, data=data,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def reset(self) -> None:
        """Same starting state for every run: counters, sequence numbers, RNG, batches."""
        self.call("/admin/reset", {})
        self.call("/admin/batches", {"reset": True, **FAKE_BATCH})

    def counts(self, mode: str) -> dict[str, Any]:
        """The server's own record; only counts that do not depend on timing."""
        if mode == "batch":
            c = self.call("/admin/batches")
            return {k: c[k] for k in ("files_created", "batches_created", "duplicate_uploads",
                                      "lines_processed", "custom_ids_processed", "billed",
                                      "by_status")}
        t = self.call("/stats")["totals"]
        return {k: t[k] for k in ("requests", "by_status", "prompt_tokens", "completion_tokens")}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def clean_env(work: Path) -> dict[str, str]:
    """The caller's environment minus anything that configures dynogen, OpenAI or the Hub."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "DYNOGEN_", "HF_", "PYTHONPATH"))}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf"),
            "OPENAI_API_KEY": "identity"}


def git(checkout: Path, *args: str) -> str:
    p = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else ""


def check_import(python: str, checkout: Path, module: str, env: dict[str, str],
                 cwd: Path) -> str:
    """Fail early unless ``PYTHONPATH=<checkout>`` really imports that checkout's ``module``
    (from a cwd inside a checkout, ``python -m``/``-c`` would import the cwd's instead)."""
    code = f"import importlib.util as u; print(u.find_spec({module!r}).origin)"
    p = subprocess.run([python, "-c", code], cwd=cwd, env={**env, "PYTHONPATH": str(checkout)},
                       capture_output=True, text=True)
    where = Path(p.stdout.strip() or "?").resolve()
    if p.returncode != 0 or checkout not in where.parents:
        raise RuntimeError(f"PYTHONPATH={checkout} imports {module} from {where}: "
                           f"{p.stderr.strip()[-300:]}")
    return str(where.relative_to(checkout))


def run_one(python: str, checkout: Path, fake: Fake, corpus: Path, group: str, mode: str,
            work: Path) -> dict[str, Any]:
    """One ``dynogen run`` in a fresh directory; its digest (times kept apart, not compared)."""
    source, flags = GROUPS[group]
    source = source.replace("<corpus>", str(corpus)).replace("<checkout>", str(checkout))
    home = work / f"{group}-{mode}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    out = home / "out"
    argv = [python, "-m", "dynogen", "run", "--source", source, "--out", str(out),
            "--base-url", fake.url, *SHARED, *MODES[mode], *flags]
    env = {**clean_env(home), "PYTHONPATH": str(checkout)}
    fake.reset()
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, cwd=home, capture_output=True, timeout=1200)
    wall = round(time.perf_counter() - t0, 2)
    subs = {str(out): "<out>", fake.root: "<fake>", str(checkout): "<checkout>",
            str(work): "<work>"}
    doc: dict[str, Any] = {"exit": p.returncode}
    for name in BAR_FILES:
        path = out / name
        doc[name] = sha_lines(path.read_bytes()) if path.exists() else None
    raw = (out / "report.json").read_text("utf-8") if (out / "report.json").exists() else "{}"
    report, dropped = strip_times(json.loads(normalise(raw, subs)))
    doc["config"] = report.pop("config", None)  # the settings echoed: apart from the counts
    doc["report"] = report
    extra: dict[str, Any] = {"server": fake.counts(mode)}
    for name in EXTRA_FILES:
        path = out / name
        extra[name] = sha_lines(normalise(path.read_text("utf-8"), subs).encode()) if (
            path.exists()) else None
    doc["extra"] = extra
    doc["info"] = {"wall_seconds": wall, "report_keys_dropped": dropped,
                   "argv": normalise(" ".join(argv[1:]), subs)}
    if p.returncode != 0:
        doc["info"]["stderr_tail"] = p.stderr.decode("utf-8", "replace")[-800:]
    return doc


def measure(checkout: Path, fake_checkout: Path, corpus: Path, python: str, groups: list[str],
            attempts: int = 3, keep: bool = False) -> dict[str, Any]:
    """Every (group, mode) of one checkout, against one fake reset before each run.

    A run that exits non-zero is run again (``attempts`` in all), each failure kept
    under ``info.failed_attempts``: the baseline's batch mode sometimes crashes in a
    thread race between two ``datasets`` loads (see bench/README.md), and a crash
    writes no output to compare, whereas a real regression fails every attempt."""
    work = Path(tempfile.mkdtemp(prefix="dynogen-identity-"))
    env = clean_env(work)
    try:
        return _measure(checkout, fake_checkout, corpus, python, groups, attempts, work, env)
    finally:
        if keep:
            print(f"  kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _measure(checkout: Path, fake_checkout: Path, corpus: Path, python: str, groups: list[str],
             attempts: int, work: Path, env: dict[str, str]) -> dict[str, Any]:
    meta = {"checkout": str(checkout), "commit": git(checkout, "rev-parse", "HEAD"),
            "dirty": bool(git(checkout, "status", "--porcelain", "--untracked-files=no")),
            "dynogen_module": check_import(python, checkout, "dynogen", env, work),
            "fake_checkout": str(fake_checkout),
            "fake_module": check_import(python, fake_checkout, "dynogen.testing.fake_openai", env,
                                        work),
            "fake_commit": git(fake_checkout, "rev-parse", "HEAD"), "python": python,
            "corpus": str(corpus), "groups": {g: list(GROUPS[g][1]) for g in groups},
            "modes": {m: list(f) for m, f in MODES.items()}, "fake_batch": FAKE_BATCH}
    runs: dict[str, Any] = {}
    t0 = time.perf_counter()
    fake = Fake(python, fake_checkout, env, work / "fake.log")
    try:
        for group in groups:
            for mode in MODES:
                failures: list[dict[str, Any]] = []
                d = run_one(python, checkout, fake, corpus, group, mode, work)
                while d["exit"] != 0 and len(failures) + 1 < attempts:
                    failures.append({"exit": d["exit"], **d["info"]})
                    print(f"  {group}/{mode}: exit {d['exit']}, running it again: "
                          f"{d['info'].get('stderr_tail', '').strip()[-200:]}", file=sys.stderr)
                    d = run_one(python, checkout, fake, corpus, group, mode, work)
                d["info"]["failed_attempts"] = failures
                runs[f"{group}/{mode}"] = d
                t, i = d["tasks.jsonl"] or {}, d["instances.jsonl"] or {}
                print(f"  {group}/{mode}: exit {d['exit']}, {t.get('lines')} tasks, "
                      f"{i.get('lines')} instances, {d['info']['wall_seconds']} s",
                      file=sys.stderr, flush=True)
    finally:
        fake.stop()
    meta["total_seconds"] = round(time.perf_counter() - t0, 1)
    return {"meta": meta, "runs": runs}


def _shown(x: Any) -> Any:
    return f"<{len(x)} fields>" if isinstance(x, dict) else x


def _diff(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """Differing leaves by dotted path; a part missing on one side is one line, not hundreds."""
    if not (isinstance(a, dict) and a and isinstance(b, dict) and b):
        return [] if a == b else [("", _shown(a), _shown(b))]
    fa, fb = dict(flatten(a)), dict(flatten(b))
    return [(k, fa.get(k, "<absent>"), fb.get(k, "<absent>")) for k in sorted(set(fa) | set(fb))
            if fa.get(k, "<absent>") != fb.get(k, "<absent>")]


def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
    """Print a table of run x part (same/DIFF) and each differing field; 1 if the bar breaks."""
    parts = ("exit", *BAR_FILES, "report", "config")
    head = f"{'run':<24}" + "".join(f"{p:>16}" for p in parts) + f"{'extra':>9}"
    print(head + "\n" + "-" * len(head))
    details: list[str] = []
    failed = False
    for key in sorted(set(a["runs"]) | set(b["runs"])):
        ra, rb = a["runs"].get(key), b["runs"].get(key)
        if ra is None or rb is None:
            print(f"{key:<24} only in {'B' if ra is None else 'A'}")
            failed = True
            continue
        cells = []
        for part in (*parts, "extra"):
            diffs = _diff(ra.get(part), rb.get(part))
            cells.append("same" if not diffs else "DIFF" if part != "extra" else "differs")
            failed |= bool(diffs) and part != "extra"
            details += [f"  {key} {part}{'.' + f if f else ''}: {va!r} -> {vb!r}"
                        for f, va, vb in diffs[:20]]
            if len(diffs) > 20:
                details.append(f"  {key} {part}: ... {len(diffs) - 20} more")
        print(f"{key:<24}" + "".join(f"{c:>16}" for c in cells[:-1]) + f"{cells[-1]:>9}")
    if details:
        print("\nDifferences (A -> B; 'extra' ones do not fail the bar):\n" + "\n".join(details))
    print(f"\nA: {a['meta']['checkout']} @ {a['meta']['commit'][:12]} (fake from "
          f"{a['meta']['fake_checkout']})\nB: {b['meta']['checkout']} @ "
          f"{b['meta']['commit'][:12]} (fake from {b['meta']['fake_checkout']})")
    print("IDENTICAL" if not failed else "DIFFERENT: the identity bar is not met")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.identity",
                                description=__doc__.split("\n")[0])
    p.add_argument("--checkout", type=Path, default=REPO, help="checkout whose dynogen runs")
    p.add_argument("--fake-checkout", type=Path, default=None,
                   help="checkout the fake server runs from (default: --checkout)")
    p.add_argument("--corpus", type=Path,
                   default=next((c for c in CORPORA if c.is_dir()), CORPORA[-1]))
    p.add_argument("--python", default=sys.executable, help="interpreter with dynogen's deps")
    p.add_argument("--groups", default=",".join(GROUPS), help="comma-separated subset")
    p.add_argument("--out", type=Path, default=None, help="write the digests here (JSON)")
    p.add_argument("--attempts", type=int, default=3,
                   help="runs of a (group, mode) that exits non-zero before giving up")
    p.add_argument("--keep", action="store_true", help="keep the run directories")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"),
                   help="compare two digest files instead of running")
    args = p.parse_args(argv)
    if args.compare:
        a, b = (json.loads(f.read_text("utf-8")) for f in args.compare)
        return compare(a, b)
    groups = [g for g in args.groups.split(",") if g]
    if unknown := sorted(set(groups) - set(GROUPS)):
        p.error(f"unknown groups {unknown}: use {', '.join(GROUPS)}")
    if not args.corpus.is_dir():
        p.error(f"corpus {args.corpus} not found: pass --corpus PATH")
    checkout = args.checkout.resolve()
    try:
        doc = measure(checkout, (args.fake_checkout or checkout).resolve(),
                      args.corpus.resolve(), args.python, groups, max(1, args.attempts), args.keep)
    except RuntimeError as e:  # a checkout or fake that is not what it claims: say so, no trace
        p.exit(2, f"python -m bench.identity: {e}\n")
    bad = [k for k, r in doc["runs"].items() if r["exit"] != 0]
    again = [k for k, r in doc["runs"].items() if r["info"]["failed_attempts"]]
    print(f"{len(doc['runs'])} runs in {doc['meta']['total_seconds']} s"
          + (f"; run again after a crash: {', '.join(again)}" if again else "")
          + (f"; non-zero exit: {', '.join(bad)}" if bad else ""), file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", "utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
