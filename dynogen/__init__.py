"""dynogen: grow instruction-tuning data from dataset metadata (after Dynosaur).

>>> import dynogen
>>> outcome = dynogen.run(dynogen.Config(source="metadata/", out="runs/a", model="gpt-4o-mini"))
>>> outcome.report["tasks"]["kept"]

Every CLI command is a function here with the same name: ``run``, ``estimate``,
``build``, ``collect``, ``export``, ``call``, ``inspect``, ``grow``, ``replay``, ``publish``;
``dataset(run_dir)`` loads a run's instances (or tasks) as a ``datasets.Dataset``;
``dynogen batch status|cancel`` are ``batch_status`` and ``batch_cancel``.
"""

import typing as _typing

from dynogen.version import __version__

# Every name below is imported on first use (PEP 562), so ``import dynogen`` and
# ``dynogen --help`` do not pay for aiohttp, the tokenizer and the engine.
_LAZY = {
    "EXIT": "dynogen.api", "RunOutcome": "dynogen.api", "arun": "dynogen.api",
    "agrow": "dynogen.api", "areplay": "dynogen.api", "grow": "dynogen.api",
    "replay": "dynogen.api",
    "batch_cancel": "dynogen.api", "batch_status": "dynogen.api",
    "build": "dynogen.api", "call": "dynogen.api", "collect": "dynogen.api",
    "dataset": "dynogen.api", "status": "dynogen.api",
    "estimate": "dynogen.api", "export": "dynogen.api", "inspect": "dynogen.api",
    "publish": "dynogen.api", "run": "dynogen.api",
    "Config": "dynogen.config", "Secret": "dynogen.config", "load_config": "dynogen.config",
    "APIError": "dynogen.errors", "BudgetExceeded": "dynogen.errors",
    "ConfigError": "dynogen.errors", "DynogenError": "dynogen.errors",
    "FatalAPIError": "dynogen.errors", "RetryableError": "dynogen.errors",
    "UserError": "dynogen.errors", "Task": "dynogen.tasks.task", "Field": "dynogen.units",
    "Skipped": "dynogen.units", "Unit": "dynogen.units",
}

if _typing.TYPE_CHECKING:
    from dynogen.api import (
        EXIT,
        RunOutcome,
        agrow,
        areplay,
        arun,
        batch_cancel,
        batch_status,
        build,
        call,
        collect,
        dataset,
        estimate,
        export,
        grow,
        inspect,
        publish,
        replay,
        run,
        status,
    )
    from dynogen.config import Config, Secret, load_config
    from dynogen.errors import (
        APIError,
        BudgetExceeded,
        ConfigError,
        DynogenError,
        FatalAPIError,
        RetryableError,
        UserError,
    )
    from dynogen.tasks.task import Task
    from dynogen.units import Field, Skipped, Unit


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dynogen' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "EXIT",
    "APIError",
    "BudgetExceeded",
    "Config",
    "ConfigError",
    "DynogenError",
    "FatalAPIError",
    "Field",
    "RetryableError",
    "RunOutcome",
    "Secret",
    "Skipped",
    "Task",
    "Unit",
    "UserError",
    "__version__",
    "agrow",
    "areplay",
    "arun",
    "batch_cancel",
    "batch_status",
    "build",
    "call",
    "collect",
    "dataset",
    "estimate",
    "export",
    "grow",
    "inspect",
    "load_config",
    "publish",
    "replay",
    "run",
    "status",
]
