"""Plots of the bench results: each client's throughput over time against the limit line.

Reads the per-second timeline the fake server kept for each client (so the
plot shows what the server saw, not what the client claims) and draws a
5-second moving average per client, the binding limit as a dashed step line,
and the steady window the bar is judged on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_rss", "plot_scenario"]

COLORS = {"dynogen": "#1f77b4", "openai-sdk": "#d62728", "curator": "#2ca02c",
          "litellm": "#9467bd"}


def _smooth(xs: list[float], k: int = 5) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= k:
            acc -= xs[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_scenario(doc: dict[str, Any], path: Path) -> Path:
    """One PNG: throughput (binding unit per minute) over seconds since the client's start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    binding = doc["binding"]
    cost = doc.get("mean_rate_limit_cost", 1.0) if binding == "tpm" else 1.0
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    for row in doc["clients"]:
        tl = row.get("timeline")
        if not tl:
            continue
        per_min = [c * 60.0 * cost for c in tl["completions"]]
        seconds = list(range(len(per_min)))
        ax.plot(seconds, _smooth(per_min), label=f"{row['label']} (429s: {row['answered_429']:,})",
                color=COLORS.get(row["client"]), lw=1.6)
        if row.get("client") == "dynogen" and row.get("steady", {}).get("window"):
            a, b = row["steady"]["window"]
            ax.axvspan(a, b, color="#1f77b4", alpha=0.06, lw=0)
    base = float(doc["fake"][binding]) if binding in ("rpm", "tpm") else None
    if base is not None:
        xmax = max((len(r["timeline"]["completions"]) for r in doc["clients"] if r.get("timeline")),
                   default=100)
        line_x: list[float] = [0.0]
        line_y: list[float] = [base]
        if doc.get("change"):
            at_list = [r.get("change_at") for r in doc["clients"] if r.get("change_at")]
            at = float(at_list[0]) if at_list else float(doc["change"][0])
            new = float(doc["change"][1].get(binding, base))
            line_x += [at, at]
            line_y += [base, new]
            base = new
        line_x.append(float(xmax))
        line_y.append(base)
        ax.plot(line_x, line_y, "k--", lw=1.2, label=f"{binding.upper()} limit")
        ax.set_ylim(0, max(line_y) * 1.6)
    unit = "requests/min" if binding == "rpm" else "tokens/min (rate-limit cost)"
    ax.set_xlabel("seconds (fake server clock; 5 s moving average)")
    ax.set_ylabel(unit)
    ax.set_title(f"{doc['scenario']}: {doc['title']}", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_rss(curve: list[tuple[float, float]], path: Path, title: str,
             limit_mb: float = 400.0) -> Path:
    """Peak-RSS curve of one process tree over time, with the memory bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    ax.plot([t for t, _ in curve], [m for _, m in curve], lw=1.5, label="RSS (process tree)")
    ax.axhline(limit_mb, color="k", ls="--", lw=1.1, label=f"bar: {limit_mb:.0f} MB")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MB")
    ax.set_ylim(0, max([limit_mb] + [m for _, m in curve]) * 1.15)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
