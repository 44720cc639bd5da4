"""The clients the bench compares: dynogen and the tools users would pick instead.

Each ``Client`` turns one job (a Batch API input file, an output path, a base
URL and the limits) into an argv; ``harness.run_measured`` runs it as its own
process. dynogen runs from the project's venv (``dynogen call``); the peers run
from ``bench/.venv-peers``, which ``ensure_peers_venv`` builds from
``bench/requirements-peers.txt`` (bespokelabs-curator pins an older ``openai``,
so peers never share the project's environment).

Offline facts the peers need (see ``peer_env``): curator and LiteLLM read
tiktoken encodings, which tiktoken downloads on first use; the same files ship
inside ``bpe-openai``, so the cache is seeded from them under the name tiktoken
looks for (the sha1 of the download URL).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CLIENTS", "PEERS_VENV", "Client", "Job", "ensure_peers_venv", "peer_env",
           "peer_python", "peer_versions"]

BENCH = Path(__file__).resolve().parent.parent
PEERS_VENV = BENCH / ".venv-peers"
REQUIREMENTS = BENCH / "requirements-peers.txt"
_TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


@dataclass(frozen=True)
class Job:
    """One client run: the same input file and server for every client."""

    requests: Path
    out: Path
    base_url: str
    rpm: float | None = None
    tpm: float | None = None
    concurrency: int = 64


@dataclass(frozen=True)
class Client:
    name: str
    label: str
    argv: Callable[[Job], list[str]]
    is_peer: bool = True


def peer_python() -> Path:
    return PEERS_VENV / "bin" / "python"


def ensure_peers_venv(log: Callable[[str], None] = print) -> str | None:
    """Create/refresh the peers' venv; returns an error line if it cannot be had."""
    py = peer_python()
    stamp = PEERS_VENV / ".requirements"
    wanted = REQUIREMENTS.read_text(encoding="utf-8")
    if py.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == wanted:
        return None
    log(f"installing peers into {PEERS_VENV} (once) ...")
    try:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True,
                           capture_output=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                       check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        err = (e.stderr or "").strip().splitlines()
        return f"pip install -r {REQUIREMENTS.name} failed: {err[-1] if err else e}"
    stamp.write_text(wanted, encoding="utf-8")
    # Keeps the venv out of git without touching the repo's .gitignore (venv does this itself
    # from Python 3.13 on).
    (PEERS_VENV / ".gitignore").write_text("*\n", encoding="utf-8")
    return None


def _seed_tiktoken(cache: Path) -> None:
    """Write bpe-openai's encoding files where tiktoken's cache expects them."""
    cache.mkdir(parents=True, exist_ok=True)
    found = subprocess.run([str(peer_python()), "-c",
                            "import bpe_openai, pathlib; print(pathlib.Path(bpe_openai.__file__)"
                            ".parent / 'data')"], capture_output=True, text=True, check=False)
    data = Path(found.stdout.strip()) if found.returncode == 0 else None
    for name in ("cl100k_base", "o200k_base"):
        target = cache / hashlib.sha1(_TIKTOKEN_URL.format(name).encode()).hexdigest()
        source = data / f"{name}.tiktoken.gz" if data else None
        if not target.exists() and source is not None and source.exists():
            target.write_bytes(gzip.decompress(source.read_bytes()))


def peer_env(work: Path) -> dict[str, str]:
    """The environment every client runs with: offline, no telemetry, no caches."""
    cache = work / "tiktoken-cache"
    if peer_python().exists():
        _seed_tiktoken(cache)
    keep = {k: v for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TERM", "PYTHONPATH")}
    return {**keep, "OPENAI_API_KEY": "sk-bench", "HF_HUB_OFFLINE": "1",
            "TELEMETRY_ENABLED": "false", "BESPOKE_CURATOR_TRACKER_DISABLED": "1",
            "CURATOR_DISABLE_CACHE": "true", "CURATOR_DISABLE_RICH_DISPLAY": "1",
            "CURATOR_VIEWER": "0", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "TIKTOKEN_CACHE_DIR": str(cache), "HF_HOME": str(work / "hf-home"),
            "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}


def peer_versions() -> dict[str, str]:
    """Installed versions of the peers, for the results file."""
    if not peer_python().exists():
        return {}
    code = ("import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
            "('openai', 'bespokelabs-curator', 'litellm')}))")
    done = subprocess.run([str(peer_python()), "-c", code], capture_output=True, text=True,
                          check=False)

    return dict(json.loads(done.stdout)) if done.returncode == 0 else {}


def _limits(job: Job) -> list[str]:
    out = []
    if job.rpm:
        out += ["--rpm", str(job.rpm)]
    if job.tpm:
        out += ["--tpm", str(job.tpm)]
    return out


def _dynogen(job: Job) -> list[str]:
    exe = Path(sys.executable).with_name("dynogen")
    return [str(exe), "call", str(job.requests), "--out", str(job.out), "--base-url",
            job.base_url, "--free", "--quiet", *_limits(job)]  # in flight: dynogen's own


def _script(name: str) -> Callable[[Job], list[str]]:
    def argv(job: Job) -> list[str]:
        return [str(peer_python()), str(Path(__file__).with_name(name)), "--requests",
                str(job.requests), "--out", str(job.out), "--base-url", job.base_url,
                "--concurrency", str(job.concurrency), *_limits(job)]
    return argv


CLIENTS: dict[str, Client] = {c.name: c for c in (
    Client("dynogen", "dynogen call", _dynogen, is_peer=False),
    Client("openai-sdk", "openai SDK + Semaphore", _script("openai_sdk.py")),
    Client("curator", "bespokelabs-curator", _script("curator_peer.py")),
    Client("litellm", "LiteLLM Router", _script("litellm_peer.py")),
)}
