"""dynogen: grow instruction-tuning data from dataset metadata (after Dynosaur).

>>> import dynogen
>>> outcome = dynogen.run(dynogen.Config(source="metadata/", out="runs/a", model="gpt-4o-mini"))
>>> outcome.report["tasks"]["kept"]

Every CLI command is a function here with the same name: ``run``, ``estimate``,
``build``, ``collect``, ``export``, ``call``, ``inspect``, ``grow``, ``replay``.
"""

# Set before the imports below: modules read it while the package initialises.
__version__ = "0.1.0"

from dynogen.api import (
    EXIT,
    RunOutcome,
    agrow,
    areplay,
    arun,
    build,
    call,
    collect,
    estimate,
    export,
    grow,
    inspect,
    replay,
    run,
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
from dynogen.tasks import Task
from dynogen.units import Field, Skipped, Unit

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
    "build",
    "call",
    "collect",
    "estimate",
    "export",
    "grow",
    "inspect",
    "load_config",
    "replay",
    "run",
]
