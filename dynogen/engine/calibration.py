"""``calibration.json``: what an earlier run's answers were like, for the next ones.

Its means price ``estimate``'s expected output; its completion lengths per
variant size ``--max-tokens auto`` (``dynogen.engine.max_tokens``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from dynogen.engine.lengths import Lengths
from dynogen.errors import ConfigError
from dynogen.store.storage import atomic_write  # StorageError on a full disk, not OSError

__all__ = ["DEFAULT_EXPECTED_OUTPUT", "Calibration", "write_calibration"]

# Measured on the fake and local servers for three tasks per answer.
DEFAULT_EXPECTED_OUTPUT = 150


@dataclass(frozen=True, slots=True)
class Calibration:
    """Completion tokens per request observed by an earlier run (and, from dynogen
    0.2 on, their lengths per variant: what ``--max-tokens auto`` sizes from)."""

    mean_output_tokens: float
    requests: int
    model: str = ""
    source: str = "default"
    lengths: Lengths = field(default_factory=Lengths, compare=False)

    @classmethod
    def load(cls, path: str | Path | None) -> Calibration:
        if path is None:
            return cls(DEFAULT_EXPECTED_OUTPUT, 0)
        p = Path(path)
        if p.is_dir():
            p = p / "calibration.json"
        try:
            d = orjson.loads(p.read_bytes())
            return cls(float(d["mean_output_tokens"]), int(d["requests"]), str(d.get("model", "")),
                       str(p), Lengths.from_json(d.get("lengths")))
        except FileNotFoundError:
            raise ConfigError(f"calibration file {p} not found: pass a run directory that "
                              "finished, or leave --calibration out for the default") from None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError(f"calibration file {p} is not one dynogen wrote") from None


def write_calibration(path: Path, *, model: str, requests: int, output_tokens: int,
                      input_tokens: int, lengths: Lengths | None = None) -> None:
    """``calibration.json``: means for ``estimate``, lengths for ``--max-tokens auto``.

    Lengths already in the file (an earlier session of the same run) are kept and
    added to: a resumed run calibrates on all its answers.
    """
    if requests <= 0:
        return
    merged = Lengths()
    # None yet, or spoiled: this session's lengths alone.
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        merged.merge(Lengths.from_json(orjson.loads(path.read_bytes()).get("lengths")))
    if lengths is not None:
        merged.merge(lengths)
    data = {"model": model, "requests": requests,
            "mean_output_tokens": output_tokens / requests,
            "mean_input_tokens": input_tokens / requests,
            "output_tokens": merged.summary(), "lengths": merged.to_json()}
    atomic_write(path, orjson.dumps(data, option=orjson.OPT_INDENT_2))
