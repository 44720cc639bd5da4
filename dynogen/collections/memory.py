"""What a collection remembers of its units and outputs, for the next grow step.

A unit's fingerprint is what the model would be shown of it (its user message
for every variant), hashed: a grow step sends a unit again only when that
changed. The dedup seed is every complete version's task and instance hashes,
so what they hold counts as a duplicate in the new version.
"""

from __future__ import annotations

from xxhash import xxh3_64_hexdigest

from dynogen.dedup import DedupSeed
from dynogen.instances.build import instance_dict_hash
from dynogen.prompts.builder import PromptBuilder
from dynogen.store.collection import Collection, task_key
from dynogen.store.instance_files import iter_instances
from dynogen.store.journal import iter_jsonl
from dynogen.tasks.filter import TaskFilter
from dynogen.units import Skipped, Unit

__all__ = ["collection_seed", "unit_fingerprint"]


def unit_fingerprint(item: Unit | Skipped, prompts: PromptBuilder) -> str:
    """What the LLM would be shown of this unit, hashed; for a source's skip, its reason.

    Not the skip's detail: it often names the path the source was read from, and
    reading the same cards from another folder is not a change.
    """
    if isinstance(item, Skipped):
        parts = ["skipped", item.reason]
    else:
        parts = ["unit", *(prompts.user_message(item, v) for v in prompts.config.variants)]
    return xxh3_64_hexdigest("\x1e".join(parts).encode("utf-8", "surrogatepass"))


def collection_seed(coll: Collection, exclude_keys: set[str]) -> DedupSeed:
    """Dedup state of the complete versions, without the units about to be re-done."""
    seed = DedupSeed()
    # The engine's own dedup key, through the same call a resumed run uses.
    tasks = TaskFilter(1, seen=seed.tasks)
    gone = coll.superseded()
    for v in coll.complete_versions():
        vdir = coll.version_dir(v)
        for rec in iter_jsonl(vdir / "tasks.jsonl"):
            if rec.get("id") in gone or task_key(rec) in exclude_keys:
                continue
            tasks.remember(rec)
        for rec in iter_instances(vdir):  # instances.jsonl or a sharded build's instances/
            if rec.get("task_id") in gone or task_key(rec) in exclude_keys:
                continue
            seed.instances.add(instance_dict_hash(rec))
    return seed
