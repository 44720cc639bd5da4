"""Markdown tables of the limit-bound scenarios from bench/results/*.json.

    python -m bench.tables      # prints the tables bench/README.md's results show

So the README's numbers are copied from the saved results, never typed in.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.scenarios import RESULTS, SCENARIOS

__all__ = ["scenario_table"]


def _bars(c: dict[str, object]) -> str:
    bars = c.get("bars") or {}
    if not isinstance(bars, dict) or not bars:
        return "–"
    missed = [k for k, ok in bars.items() if not ok]
    return "**pass**" if not missed else "miss: " + ", ".join(missed)


def scenario_table(name: str) -> str:
    path = Path(RESULTS) / f"{name}.json"
    d = json.loads(path.read_text())
    lines = [
        f"### {d['scenario']}: {d['title']} ({d['requests']} requests)",
        "",
        "| client | % of limit (60 s window) | 429s (% of requests) | completed / lost | wall s "
        "| client CPU s | CPU ms/req | peak RSS MB | bars |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in d["clients"]:
        if c.get("error"):
            lines.append(f"| {c['label']} | could not run: {c['error']} |||||||| |")
            continue
        lines.append(
            f"| {c['label']} | {c['pct_of_limit']:.1f} | {c['answered_429']:,} "
            f"({c['pct_429']:.2f} %) | {c['completed']:,} / {c['lost']:,} | "
            f"{c['wall_seconds']:.1f} | {c['cpu_seconds']:.2f} | {c['cpu_ms_per_request']:.2f} | "
            f"{c['peak_rss_mb']:.0f} | {_bars(c)} |"
        )
    return "\n".join(lines)


def main() -> None:
    for name in SCENARIOS:
        if (Path(RESULTS) / f"{name}.json").exists():
            print(scenario_table(name))
            print()


if __name__ == "__main__":
    main()
