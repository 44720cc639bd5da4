"""Test and benchmark helpers shipped with dynogen: fake OpenAI-compatible (chat and Batch API),
Anthropic (Messages and Message Batches, ``fake_anthropic``) and Hub servers (reading, and
the commit API ``dynogen publish`` writes through).

Names load lazily so that ``python -m dynogen.testing.fake_openai`` runs the
module fresh (an eager import here would make runpy warn about a module
imported twice).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dynogen.testing.fake_answers import DEFAULT_FAULT_KINDS, FAULT_KINDS, Fault, Latency
    from dynogen.testing.fake_anthropic import FakeAnthropic, FakeAnthropicServer
    from dynogen.testing.fake_anthropic_batches import FakeMessageBatches
    from dynogen.testing.fake_anthropic_process import FakeAnthropicProcess, start_fake_anthropic
    from dynogen.testing.fake_batches import FakeBatches
    from dynogen.testing.fake_hub import FakeHub, HubServer, serve_hub, synthetic_hub
    from dynogen.testing.fake_hub_commit import FakeHubCommits, serve_hub_commits
    from dynogen.testing.fake_openai import (
        FakeOpenAI,
        FakeProcess,
        FakeServer,
        Recorded,
        make_app,
        serve,
        start_fake_process,
    )

__all__ = [
    "DEFAULT_FAULT_KINDS",
    "FAULT_KINDS",
    "FakeAnthropic",
    "FakeAnthropicProcess",
    "FakeAnthropicServer",
    "FakeMessageBatches",
    "FakeHub",
    "FakeHubCommits",
    "FakeBatches",
    "FakeOpenAI",
    "FakeProcess",
    "FakeServer",
    "Fault",
    "HubServer",
    "Latency",
    "Recorded",
    "make_app",
    "serve",
    "serve_hub",
    "serve_hub_commits",
    "start_fake_anthropic",
    "start_fake_process",
    "synthetic_hub",
]

_HOME = {
    "FakeAnthropic": "fake_anthropic",
    "FakeAnthropicServer": "fake_anthropic",
    "FakeMessageBatches": "fake_anthropic_batches",
    "FakeAnthropicProcess": "fake_anthropic_process",
    "start_fake_anthropic": "fake_anthropic_process",
    "DEFAULT_FAULT_KINDS": "fake_answers",
    "FAULT_KINDS": "fake_answers",
    "Fault": "fake_answers",
    "Latency": "fake_answers",
    "FakeHub": "fake_hub",
    "HubServer": "fake_hub",
    "serve_hub": "fake_hub",
    "synthetic_hub": "fake_hub",
    "FakeHubCommits": "fake_hub_commit",
    "serve_hub_commits": "fake_hub_commit",
    "FakeBatches": "fake_batches",
    "FakeOpenAI": "fake_openai",
    "FakeProcess": "fake_openai",
    "FakeServer": "fake_openai",
    "Recorded": "fake_openai",
    "make_app": "fake_openai",
    "serve": "fake_openai",
    "start_fake_process": "fake_openai",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'dynogen.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dynogen.testing.{home}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
