"""The dataset card (README.md) of published or exported instances.

Built with ``huggingface_hub.DatasetCard``/``DatasetCardData``. The YAML names
what the Hub indexes: ``license`` (every source licence id the Hub knows, ``other``
for the rest, ``unknown`` for sources that name none), ``source_datasets``,
``task_categories``, ``language`` (the run's language policy), ``size_categories``
and, for a Hub repository, ``configs`` pointing at the shards: ``default`` with
everything, plus one config per licence class when classes mix, each with a
``train`` split and, when tasks were held out, a ``heldout`` split.

The prose says how the data was made (model, dynogen version, run fingerprint and
prompts digest from ``manifest.json``, the data policies, counts kept and dropped
by reason and the cost from ``report.json``: one column per run, or per version of
a collection) and lists the source datasets with licence, class, counts and
citation. No timestamps: the same data gives the same card, byte for byte.

>>> text = card_text(target, facts, repo="org/name")  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dynogen.errors import RunDirError
from dynogen.instances.provenance import DataFacts, RunFacts, Target
from dynogen.policy.licenses import HUB_LICENSES, REDISTRIBUTABLE
from dynogen.store.storage import atomic_write
from dynogen.version import __version__

__all__ = ["CARD_TAG", "card_configs", "card_text", "export_card", "is_dynogen_card",
           "size_category", "write_card_beside"]

CARD_TAG = "dynogen"  # in the card's tags: how a README.md dynogen may overwrite is recognised
DYNOSAUR = """@article{yin2023dynosaur,
  title   = {Dynosaur: A Dynamic Growth Paradigm for Instruction-Tuning Data Curation},
  author  = {Yin, Da and Liu, Xiao and Yin, Fan and Zhong, Ming and Bansal, Hritik and
             Han, Jiawei and Chang, Kai-Wei},
  journal = {arXiv preprint arXiv:2305.14327},
  year    = {2023}
}"""
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
          (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"),
          (1_000_000_000, "100M<n<1B"))
_CLASS_TEXT = {
    "permissive": "attribution at most (MIT, Apache, BSD, CC-BY, CC0...)",
    "share-alike": "derivatives under the same terms (CC-BY-SA, GPL, ODbL...)",
    "non-commercial": "no commercial use (any -NC licence, research-only terms)",
    "no-derivatives": "no derivatives: data derived from it may not be shared",
    "other": "terms in prose that no program read: read them before use",
    "unknown": "the source names no licence we could place: its terms are unknown",
}


def size_category(n: int) -> str:
    for bound, name in _SIZES:
        if n < bound:
            return name
    return "n>1B"


def card_configs(facts: DataFacts) -> list[dict[str, Any]]:
    """``configs`` for a repository laid out by ``instances.shards``."""

    def files(cls: str) -> list[dict[str, str]]:
        return [{"split": s, "path": f"data/{cls}/{s}-*.parquet"} for s in facts.splits
                if any(c == cls or cls == "*" for c, sp in facts.rows if sp == s)]

    out: list[dict[str, Any]] = [{"config_name": "default", "data_files": files("*"),
                                  "default": True}]
    if len(facts.classes) > 1:
        out += [{"config_name": c, "data_files": files(c)} for c in facts.classes]
    return out


def _yaml_license(facts: DataFacts) -> str | list[str]:
    ids = [i for i in facts.license_ids() if i in HUB_LICENSES]
    if any(i not in HUB_LICENSES for i in facts.license_ids()):
        ids.append("other")
    if any(s.unlicensed for s in facts.sources.values()):
        ids.append("unknown")
    ids = list(dict.fromkeys(ids)) or ["unknown"]
    return ids[0] if len(ids) == 1 else ids


def _languages(runs: list[RunFacts]) -> list[str] | None:
    out: list[str] = []
    for run in runs:
        spec = str(run.setting("languages", "en") or "")
        codes = [c.strip() for c in spec.split(",") if c.strip()]
        if not codes or "any" in codes:
            return None
        out += [c for c in codes if c not in out]
    return out or None


def _cell(v: Any) -> str:
    return " ".join(str(v).split()).replace("|", "\\|") if v not in (None, "") else "—"


def _table(header: list[str], rows: Iterable[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _reasons(c: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def _sum(runs: list[RunFacts], *keys: str) -> Counter[str]:
    total: Counter[str] = Counter()
    for run in runs:
        for k, v in run.section(*keys).items():
            if isinstance(v, int | float):
                total[k] += int(v)
    return total


def _count(runs: list[RunFacts], *keys: str) -> int:
    total = 0
    for run in runs:
        value: Any = run.report
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        total += int(value) if isinstance(value, int | float) else 0
    return total


def _made(runs: list[RunFacts]) -> str:
    def policy(run: RunFacts) -> str:
        share = run.setting("max_share")
        return (f"licenses {run.setting('licenses', 'permissive,share-alike')}; languages "
                f"{run.setting('languages', 'en')}; splits {run.setting('splits', '')}"
                + (f"; max share {share}" if share is not None else ""))

    rows = [
        ["model", *[r.setting("model") for r in runs]],
        ["mode", *[(r.manifest.get("config") or {}).get("mode", "online") for r in runs]],
        ["dynogen version", *[r.manifest.get("dynogen_version") for r in runs]],
        ["run fingerprint", *[f"`{r.manifest.get('fingerprint')}`" for r in runs]],
        ["prompts digest", *[f"`{r.identity.get('prompts')}`" for r in runs]],
        ["prompt variants", *[", ".join(r.setting("variants") or ()) for r in runs]],
        ["tasks per unit (max)", *[r.setting("max_tasks_per_unit") for r in runs]],
        ["data policies", *[policy(r) for r in runs]],
        ["judge", *["on" if r.setting("judge") else "off" for r in runs]],
        ["held-out fraction of tasks", *[r.setting("heldout_fraction", 0.0) for r in runs]],
        ["rows per split", *[r.setting("rows_per_split") for r in runs]],
        ["requests paid", *[f"{int(r.report.get('requests_paid') or 0):,}" for r in runs]],
        ["cost", *[f"${r.cost_usd:.4f}" for r in runs]],
    ]
    stopped = [r.label for r in runs if r.section("session").get("stop_reason")]
    out = _table(["", *[r.label for r in runs]], rows)
    if stopped:
        out += (f"\n\nStopped before the end ({', '.join(stopped)}): the data holds what was "
                "done; running the same command again continues it.")
    return out


def _kept_dropped(runs: list[RunFacts]) -> str:
    units_skipped = _sum(runs, "units", "skipped_by_reason")
    units_failed = _sum(runs, "units", "failed_by_reason")
    dropped = _sum(runs, "tasks", "dropped_by_reason")
    inst_skipped = _sum(runs, "instances", "skipped_by_reason")
    lines = [
        f"- units (dataset configs): {_count(runs, 'units', 'seen'):,} seen, "
        f"{_count(runs, 'units', 'processed'):,} sent to the model, "
        f"{_count(runs, 'units', 'skipped'):,} skipped"
        + (f" ({_reasons(units_skipped)})" if units_skipped else "")
        + f", {_count(runs, 'units', 'failed'):,} failed"
        + (f" ({_reasons(units_failed)})" if units_failed else ""),
        f"- tasks: {_count(runs, 'tasks', 'generated'):,} generated, "
        f"{_count(runs, 'tasks', 'kept'):,} kept, {_count(runs, 'tasks', 'dropped'):,} dropped"
        + (f" ({_reasons(dropped)})" if dropped else "")
        + (f", {_count(runs, 'tasks', 'over_max_share'):,} over the max share"
           if _count(runs, "tasks", "over_max_share") else ""),
        f"- instances: {_count(runs, 'instances', 'written'):,} written, "
        f"{_count(runs, 'instances', 'duplicates'):,} duplicates dropped, "
        f"{_count(runs, 'instances', 'truncated_around_answer'):,} inputs cut around the answer"
        + (f"; rows skipped: {_reasons(inst_skipped)}" if inst_skipped else ""),
    ]
    return "\n".join(lines)


def card_text(target: Target, facts: DataFacts, *, repo: str | None = None,
              configs: bool = True) -> str:
    """The card as text. ``configs=False`` for a local export (one file, no shards)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    title = repo.split("/")[-1] if repo else target.path.resolve().name
    runs = target.runs
    meta: dict[str, Any] = {}
    licence = _yaml_license(facts)
    if "other" in licence:  # the Hub's field for terms outside its list
        meta["license_details"] = ("each instance keeps its source dataset's licence: see the "
                                   "Licences table")
    if configs:
        meta["configs"] = card_configs(facts)
    data = DatasetCardData(
        license=licence,
        language=_languages(runs),
        size_categories=[size_category(facts.total)],
        source_datasets=list(facts.sources),
        task_categories=["text-generation"],
        pretty_name=title,
        tags=[CARD_TAG, "synthetic", "instruction-tuning"],
        **meta,
    )
    kind = "collection" if target.kind == "collection" else "run"
    parts = [
        f"# {title}",
        f"{facts.total:,} instruction-tuning instances of {facts.tasks:,} tasks from "
        f"{len(facts.sources):,} source datasets, grown with dynogen {__version__} after "
        "[Dynosaur](https://arxiv.org/abs/2305.14327): a language model read each source "
        "dataset's metadata (description, fields and their types, label names, licence) and "
        "designed tasks (an instruction, input fields, one output field); rules dropped "
        "invalid and duplicate tasks; and the datasets' rows became `(instruction, input, "
        f"output)` instances. Made by one {kind}"
        + (f" in {len(runs)} versions" if kind == "collection" else "") + ".",
        "## Structure",
        _table(["licence class", "split", "instances"],
               [[c, s, f"{n:,}"] for (c, s), n in sorted(facts.rows.items())]),
        "Columns: `instruction`, `input`, `output`; `task_id`; the source `dataset`, its "
        "`config` and `split` (the row's); `license` (the source's) and `license_class`; "
        "`task_split`: `train`, or `heldout` for tasks held out whole (no held-out task has "
        "rows in `train`)"
        + ("; `version`: the collection version that made it" if facts.with_version else "")
        + "".join(f"; `{c}`" for c in facts.extra_columns) + ".",
    ]
    if configs and repo:
        parts.append(f'```python\nfrom datasets import load_dataset\n\nds = load_dataset("{repo}")'
                     + (f'  # or a licence class: load_dataset("{repo}", "permissive")'
                        if len(facts.classes) > 1 else "") + "\n```")
    restricted = facts.restricted()
    parts += [
        "## Licences",
        "Each instance keeps the licence of its source dataset; a source naming several "
        "licences is in the strictest class. "
        + " ".join(f"**{c}**: {_CLASS_TEXT[c]}." for c in facts.classes)
        + (" One config per class lets you load only what your use allows." if configs and
           len(facts.classes) > 1 else ""),
    ]
    if restricted:
        parts.append(
            f"**Check before use:** {len(restricted)} source datasets are not under a "
            f"{' or '.join(REDISTRIBUTABLE)} licence: "
            + ", ".join(f"{s.dataset} ({s.license or 'none'}, {s.license_class})"
                        for s in restricted) + ".")
    parts.append(_table(
        ["source dataset", "configs", "licence", "class", "tasks", "instances", "citation"],
        [[s.dataset, ", ".join(sorted(s.configs)), s.license or "none", s.license_class,
          f"{len(s.tasks):,}", f"{s.instances:,}", "below" if s.citation else ""]
         for s in facts.sources.values()]))
    parts += [
        "## How it was made",
        _made(runs),
        "Kept and dropped (each run's `report.json`"
        + (", summed over the versions" if len(runs) > 1 else "") + "):",
        _kept_dropped(runs),
        "The run fingerprint hashes every setting that shapes the outputs (model, prompts, "
        "rules, policies); the prompts digest hashes the system prompt, the few-shot turns "
        "and the response schema. Runs with the same fingerprint ask the same questions.",
        "## Citation",
        "Cite the source datasets you use, and Dynosaur for the method:",
    ]
    for s in facts.sources.values():
        if s.citation:
            parts.append(f"{s.dataset}:\n\n```bibtex\n{s.citation}\n```")
    parts.append(f"```bibtex\n{DYNOSAUR}\n```")
    body = "\n\n".join(parts) + "\n"
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def is_dynogen_card(path: Path) -> bool:
    """Whether ``path`` is a card dynogen wrote (its tags name dynogen)."""
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard.load(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    tags = card.data.get("tags") or []
    return isinstance(tags, list) and CARD_TAG in tags


def write_card_beside(out: Path, text: str) -> Path:
    """Write the card of an export: ``README.md`` inside a ``datasets`` folder, or beside a
    file. A README.md dynogen did not write is never replaced: the card then goes to
    ``NAME.README.md`` beside the file."""
    card = out / "README.md" if out.is_dir() else out.parent / "README.md"
    if not out.is_dir() and card.exists() and not is_dynogen_card(card):
        card = out.with_name(out.name + ".README.md")
    atomic_write(card, text.encode("utf-8"))
    return card


def export_card(target: Path, out: Path) -> Path | None:
    """The card of ``target`` (a run directory or a collection) written beside its export
    ``out``; ``None`` for a collection with no complete version yet."""
    try:
        tgt = Target.open(target)
    except RunDirError:
        return None
    facts = DataFacts.scan(tgt.records(), citations=tgt.citations)
    return write_card_beside(out, card_text(tgt, facts, configs=False))
