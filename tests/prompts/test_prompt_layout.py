"""Prompt layouts: one cacheable prefix for every unit (``shared``), or the per-unit schema.

End to end against the fake over real HTTP: what OpenAI's prompt cache would bill,
``prompt_cache_key`` and a server that refuses it, answers naming fields the unit
lacks, which layout ``auto`` picks, and what happens to run directories and
collections begun before layouts existed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from dynogen.api import agrow, arun, build, estimate
from dynogen.commands.estimate import cacheable_prefix, format_estimate
from dynogen.compose import resolve_layout, resolve_price, run_identity
from dynogen.config import DEFAULT_BASE_URL, Config
from dynogen.errors import RunDirError
from dynogen.prompts.builder import PromptBuilder, fewshot_examples
from dynogen.prompts.dialect import Dialect, adapt
from dynogen.prompts.tokens import TokenCounter
from dynogen.testing import FakeOpenAI, serve
from dynogen.testing.fake_batches import FakeBatches
from dynogen.units import Field, Skipped, Unit

# The per-unit layout's request bodies for run_identity's probe unit, digested: the
# bytes every run directory and collection written before prompt layouts sent. If this
# changes, those runs can no longer be resumed (see the README's "prompt layouts").
PER_UNIT_PROMPTS = "af1a7d06c92ce4db"

SHAPES = [
    (Field("premise", "string"), Field("hypothesis", "string"),
     Field("label", "class_label", ("entailment", "neutral", "contradiction"))),
    (Field("question", "string"), Field("context", "string"), Field("answer", "string"),
     Field("qid", "string")),
    (Field("text", "string"), Field("topic", "class_label", ("world", "sports", "business"))),
]


def unit(i: int, desc: str | None = None) -> Unit:
    return Unit(f"ds{i:02d}", "default", desc or f"Dataset number {i}, about topic {i}.",
                SHAPES[i % len(SHAPES)], license="mit")


def units(n: int) -> list[Unit | Skipped]:
    return [unit(i) for i in range(n)]


def distinct_units(n: int) -> list[Unit | Skipped]:
    """Units no two of which share a field name (so no two per-unit schemas are alike)."""
    return [Unit(f"dd{i:02d}", "default", f"Dataset {i}.", tuple(
        Field(f"{f.name}_{i}", f.type, f.labels) for f in SHAPES[i % len(SHAPES)]),
        license="mit") for i in range(n)]


def cfg(url: str, **kw: Any) -> Config:
    base: dict[str, Any] = dict(base_url=url, model="gpt-4o-mini", quiet=True,
                                max_in_flight=4, retry_base_delay=0.01, retry_max_delay=0.05,
                                licenses="any", languages="any", splits="all")
    base.update(kw)
    return Config(**base)


def builder(layout: str, **kw: Any) -> PromptBuilder:
    return PromptBuilder(Config(prompt_layout=layout, **kw), TokenCounter("o200k_base"))


def _shared_part(body: dict[str, Any]) -> bytes:
    """What a cache that hashes the schema first sees before the unit's own message."""
    return orjson.dumps([body.get("response_format"), body["messages"][:-1]])


# ------------------------------------------------------------------ the prompts themselves

def test_shared_layout_sends_one_prefix_for_every_unit_and_variant() -> None:
    pb = builder("shared")
    bodies = [pb.request(unit(i), v).body for i in range(3) for v in Config().variants]
    assert len({_shared_part(b) for b in bodies}) == 1
    assert len({b["prompt_cache_key"] for b in bodies}) == 1
    assert bodies[0]["prompt_cache_key"].startswith("dynogen-shared-")
    # The unit-specific part is last, and it is the same message the per-unit layout sends.
    per_unit = builder("per_unit").request(unit(1), "no_description").body
    assert bodies[3]["messages"][-1] == per_unit["messages"][-1]
    # Field names are bounded free strings: nothing of any unit is in the schema.
    schema = json.dumps(bodies[0]["response_format"])
    assert "enum" not in schema and "premise" not in schema and '"maxLength": 128' in schema


def test_per_unit_layout_is_todays_prompt_byte_for_byte() -> None:
    bodies = [builder("per_unit").request(unit(i), "description").body for i in range(3)]
    assert len({_shared_part(b) for b in bodies}) == 3  # the schema names each unit's fields
    assert all("prompt_cache_key" not in b for b in bodies)
    for layout in ("per_unit", "auto"):
        ident = run_identity(Config(prompt_layout=layout))
        assert ident["prompts"] == PER_UNIT_PROMPTS
        assert ident["prompt_layout"] == "per_unit"
    assert run_identity(Config(prompt_layout="shared"))["prompts"] != PER_UNIT_PROMPTS


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_shared_prefix_is_over_1024_tokens_even_without_its_schema(encoding: str) -> None:
    # OpenAI does not say how it renders a schema into tokens: the messages alone must
    # reach the 1,024-token minimum so the prefix is cached however short that is.
    pb = PromptBuilder(Config(prompt_layout="shared"), TokenCounter(encoding))
    for v in Config().variants:
        assert pb.prefix_tokens(v) >= 1024
        assert pb.shared_prefix_tokens(v) > pb.prefix_tokens(v)
    assert builder("per_unit").shared_prefix_tokens("description") == 0
    assert builder("per_unit").prefix_tokens("description") < 1024


def test_shared_fewshot_shows_the_conventions() -> None:
    examples = fewshot_examples("shared")
    assert len(examples) > len(fewshot_examples("per_unit")) == 2
    for ex in examples:
        fields = {f["name"]: f for f in ex["metadata"]["fields"]}
        for t in ex["tasks"]:
            assert {*t["input_fields"], t["output_field"]} <= set(fields)
            out = fields[t["output_field"]]
            # The answers are appended from the labels: an instruction never lists them.
            for label in out.get("labels", ()):
                assert f" {label}," not in t["instruction"] and f" {label}." not in \
                    t["instruction"]
            # Inputs carry content: never only ids, urls or dates.
            assert not all(fields[i]["type"].startswith("timestamp") or i in (
                "report_id", "url", "item_id", "annotator") for i in t["input_fields"])
            # No instruction quotes an example row.
            for row in ex["metadata"].get("samples", ()):
                assert all(str(v) not in t["instruction"] for v in row.values())
    # A choice key is answered with its choices.
    quiz = next(ex for ex in examples if any(f["name"] == "options"
                                              for f in ex["metadata"]["fields"]))
    key = next(t for t in quiz["tasks"] if t["output_field"] == "correct_option")
    assert "options" in key["input_fields"]


def test_a_refused_prompt_cache_key_is_dropped_by_the_dialect() -> None:
    d = adapt(Dialect(), "request refused with HTTP 400: Unrecognized request argument "
                         "supplied: prompt_cache_key")
    assert d is not None and not d.cache_key and d.format == "json_schema"
    assert adapt(d, "Unrecognized request argument supplied: prompt_cache_key") is None
    body = builder("shared").request(unit(0), "description", dialect=d).body
    assert "prompt_cache_key" not in body and "response_format" in body


# ------------------------------------------------------------------ which layout auto picks

def _resolved(**kw: Any) -> str:
    c = Config(**kw)
    return resolve_layout(c, resolve_price(c), follow_run=False).prompt_layout


def test_auto_picks_shared_only_for_openai_online_with_a_cache_discount() -> None:
    assert _resolved() == "shared"  # gpt-4o-mini at api.openai.com, online
    assert _resolved(base_url=DEFAULT_BASE_URL + "/") == "shared"
    assert _resolved(mode="batch") == "per_unit"  # batch lines get no cache discount
    assert _resolved(model="gpt-3.5-turbo") == "per_unit"  # its price has no cached rate
    assert _resolved(base_url="http://127.0.0.1:8080/v1") == "per_unit"  # another server
    assert _resolved(local=True) == "per_unit"  # the bundled llama.cpp: grammar enums
    assert _resolved(free=True) == "per_unit"
    assert _resolved(price_in=0.15, price_out=0.6) == "per_unit"  # no cached price given
    # Another provider's price with a cache rate: its cache is not OpenAI's.
    assert _resolved(model="claude-sonnet-4-5") == "per_unit"
    assert _resolved(model="gemini/gemini-2.5-flash") == "per_unit"
    # The model's name decides nothing: the same name elsewhere is per_unit.
    assert _resolved(model="gpt-4o-mini", base_url="http://proxy.local/v1") == "per_unit"
    for layout in ("shared", "per_unit"):
        assert _resolved(prompt_layout=layout, base_url="http://x/v1", mode="batch") == layout


def test_estimate_shows_the_cached_share_of_the_shared_layout() -> None:
    e = estimate(Config(source="unused", model="gpt-4o-mini"), source=units(6))
    assert e.prompt_layout == {"online": "shared", "batch": "per_unit"}
    pb = builder("shared")
    per = cacheable_prefix(pb.shared_prefix_tokens("description"))
    assert per >= 1024
    assert e.cached_input_tokens == per * (e.requests - 1)  # the first request writes it
    assert e.cached_share > 0.6
    by = e.input_tokens_by_mode
    assert by is not None and by["online"] == e.input_tokens != by["batch"]
    text = format_estimate(e)
    assert "prompt layout      online shared (" in text and "batch per_unit" in text
    old = estimate(Config(source="unused", model="gpt-4o-mini", prompt_layout="per_unit"),
                   source=units(6))
    assert old.cached_input_tokens == 0
    # "high" stays worst case (nothing cached, as the budget reserves); the expected
    # online figure is cheaper with the cache.
    price = resolve_price(Config())
    assert e.cost_usd["high"]["online"] == round(price.cost(by["online"], e.output_tokens[
        "high"]), 6)
    assert e.cost_usd["expected"]["online"] < old.cost_usd["expected"]["online"] * 1.2


# ------------------------------------------------------------------ runs against the fake

async def test_shared_layout_is_billed_mostly_cached(tmp_path: Path) -> None:
    fake = FakeOpenAI(exact_tokens=True, prompt_cache=True, output_tokens=60)
    async with serve(fake) as server:
        shared = await arun(cfg(server.url, out=str(tmp_path / "s"), prompt_layout="shared"),
                            source=distinct_units(6))
        fake.reset()
        per_unit = await arun(cfg(server.url, out=str(tmp_path / "p")),
                              source=distinct_units(6))
    for o in (shared, per_unit):
        assert o.exit_code == 0, o.message
        assert o.report["requests"] == 12
    s, p = shared.report["tokens"], per_unit.report["tokens"]
    assert s["cached"] / s["in"] > 0.6
    assert p["cached"] == 0  # every unit's schema differs from the one before it
    assert shared.report["tasks"]["kept"] > 0
    ledger = shared.report["cost"]["ledger"]
    assert ledger["tokens"]["cached"] == s["cached"]  # billed at the cached price
    assert ledger["spent_usd"] < per_unit.report["cost"]["ledger"]["spent_usd"] * 1.2


async def test_the_batch_fake_reports_cached_tokens_and_batch_is_billed_uncached(
        tmp_path: Path) -> None:
    fake = FakeOpenAI(exact_tokens=True, prompt_cache=True, output_tokens=60)
    batches = FakeBatches(fake, validating=0.01, in_progress=0.05, finalizing=0.01)
    async with serve(fake) as server:
        out = await arun(cfg(server.url, out=str(tmp_path / "b"), prompt_layout="shared",
                             mode="batch", poll_seconds=0.05), source=distinct_units(6))
    assert out.exit_code == 0, out.message
    billed = batches.counts()["billed"]
    assert billed["lines"] == 12 and billed["cached_tokens"] / billed["prompt_tokens"] > 0.6
    assert [b.usage[2] for b in batches.batches.values()] == [billed["cached_tokens"]]
    tok = out.report["tokens"]
    assert (tok["in"], tok["cached"]) == (billed["prompt_tokens"], billed["cached_tokens"])
    # dynogen never stacks the cache discount on batch prices: an upper bound.
    price = resolve_price(Config())
    assert out.report["cost"]["ledger"]["spent_usd"] == pytest.approx(price.cost(
        billed["prompt_tokens"], billed["completion_tokens"], batch=True), abs=1e-9)


async def test_prompt_cache_key_is_sent_and_dropped_when_the_server_refuses_it(
        tmp_path: Path) -> None:
    fake = FakeOpenAI(refuse_params=["prompt_cache_key"])
    async with serve(fake) as server:
        out = await arun(cfg(server.url, out=str(tmp_path / "r"), prompt_layout="shared"),
                         source=units(4))
    assert out.exit_code == 0, out.message
    keyed = [r for r in fake.history if "prompt_cache_key" in r.body]
    assert keyed and len(keyed) <= 4  # at most the requests in flight when it was refused
    assert len(fake.history) - len(keyed) == 8  # every request answered, without the key
    assert out.report["session"].get(
        "adapted:format=json_schema, max_tokens, temperature=sent, no prompt_cache_key") == 1
    accepted = FakeOpenAI()
    async with serve(accepted) as server:
        await arun(cfg(server.url, out=str(tmp_path / "a"), prompt_layout="shared"),
                   source=units(2))
    assert {r.body["prompt_cache_key"] for r in accepted.history} == {
        builder("shared").request(unit(0), "description").body["prompt_cache_key"]}


async def test_shared_schema_answers_go_through_the_task_filter(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    bad = {"tasks": [
        {"instruction": "Decide how the hypothesis relates to the premise sentence.",
         "input_fields": ["premise", "hypothesis"], "output_field": "label"},
        {"instruction": "Write the hypothesis that goes with this premise sentence.",
         "input_fields": ["premise", "Premise"], "output_field": "hypothesis"},
        {"instruction": "Give the verdict on the hypothesis about the premise sentence.",
         "input_fields": ["premise", "hypothesis"], "output_field": "gold_label"}]}
    fake.enqueue(json.dumps(bad), json.dumps({"tasks": [
        {"instruction": "Copy the premise sentence word for word into the output field.",
         "input_fields": ["premise"], "output_field": "premise"}]}))
    async with serve(fake) as server:
        out = await arun(cfg(server.url, out=str(tmp_path / "f"), prompt_layout="shared",
                             max_in_flight=1), source=[unit(0)])
    assert out.exit_code == 0, out.message
    assert out.report["tasks"]["dropped_by_reason"] == {
        "unknown_input_field": 1, "unknown_output_field": 1, "output_in_inputs": 1}
    kept = [json.loads(line) for line in (out.out / "tasks.jsonl").read_text().splitlines()]
    assert [t["output_field"] for t in kept] == ["label"]
    assert kept[0]["labels"] == ["entailment", "neutral", "contradiction"]


# ------------------------------------------------------------------ existing work

def _strip_layout(run: Path) -> None:
    """Make ``run``'s manifest one written before prompt layouts existed."""
    m = orjson.loads((run / "manifest.json").read_bytes())
    for part in ("identity", "config"):
        m[part].pop("prompt_layout")
    (run / "manifest.json").write_bytes(orjson.dumps(m, option=orjson.OPT_INDENT_2))


async def test_a_run_keeps_the_layout_it_began_with(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    out = tmp_path / "run"
    async with serve(fake) as server:
        first = await arun(cfg(server.url, out=str(out), prompt_layout="shared"),
                           source=units(3))
        assert first.exit_code == 0
        # auto on a begun run takes the manifest's layout (this server alone would give
        # per_unit), so the resume sends the same bytes: nothing is asked again.
        fake.history.clear()
        again = await arun(cfg(server.url, out=str(out)), source=units(4))
        assert again.exit_code == 0, again.message
        assert len(fake.history) == 2 and all("prompt_cache_key" in r.body
                                               for r in fake.history)
        with pytest.raises(RunDirError) as e:
            await arun(cfg(server.url, out=str(out), prompt_layout="per_unit"),
                       source=units(4))
    msg = str(e.value)
    assert "prompt_layout: it began with 'shared'" in msg
    assert "--prompt-layout shared" in msg and "--force-new" in msg


async def test_a_run_from_before_layouts_resumes_with_its_prompts(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    out = tmp_path / "old"
    async with serve(fake) as server:
        first = await arun(cfg(server.url, out=str(out), prompt_layout="per_unit"),
                           source=units(3))
        assert first.exit_code == 0
        _strip_layout(out)
        fake.history.clear()
        again = await arun(cfg(server.url, out=str(out)), source=units(4))
        assert again.exit_code == 0, again.message
        assert len(fake.history) == 2  # only the new unit, with the per-unit schema
        assert all("prompt_cache_key" not in r.body for r in fake.history)
        _strip_layout(out)
        assert build(out).exit_code == 0  # build reads a manifest without the key too
        with pytest.raises(RunDirError, match="prompt_layout: it began with 'per_unit'"):
            await arun(cfg(server.url, out=str(out), prompt_layout="shared"), source=units(4))


async def test_growing_a_collection_under_another_layout_asks_no_unit_again(
        tmp_path: Path) -> None:
    coll = tmp_path / "coll"
    fake = FakeOpenAI()
    async with serve(fake) as server:
        one = await agrow(coll, cfg(server.url, prompt_layout="per_unit"), source=units(4))
        assert one.exit_code == 0, one.message
        fake.history.clear()
        # The fingerprint is the unit's message, which no layout changes.
        same = await agrow(coll, cfg(server.url, prompt_layout="shared"), source=units(4))
        assert same.message.startswith("nothing new: 4 units unchanged")
        assert fake.history == []
        two = await agrow(coll, cfg(server.url, prompt_layout="shared"), source=units(6))
        assert two.exit_code == 0, two.message
    assert len(fake.history) == 4 and all("prompt_cache_key" in r.body for r in fake.history)
    versions = orjson.loads((coll / "collection.json").read_bytes())["versions"]
    assert [v["config"]["prompt_layout"] for v in versions] == ["per_unit", "shared"]
