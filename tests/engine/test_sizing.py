"""``--max-tokens auto``: the pure sizing rules, and a run that sizes itself against the fake."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from dynogen.api import EXIT, arun, estimate
from dynogen.config import Config, load_config
from dynogen.engine.lengths import (
    FLOOR,
    MIN_ANSWERS,
    PILOT_REQUESTS,
    Lengths,
    choose,
    format_by_variant,
    parse_by_variant,
    quantile,
    resolve,
)
from dynogen.errors import ConfigError, RunDirError
from dynogen.testing import FakeOpenAI, Fault, serve
from dynogen.units import Field, Unit

# ----------------------------------------------------------------------------- pure


def test_quantile_is_the_smallest_length_covering_q() -> None:
    h = Counter({100: 98, 150: 1, 400: 1})
    assert quantile(h, 0.5) == 100
    assert quantile(h, 0.98) == 100
    assert quantile(h, 0.99) == 150
    assert quantile(h, 1.0) == 400


def test_choose_is_a_high_quantile_with_margin_rounded_and_bounded() -> None:
    many = Counter({100: 490, 160: 14, 900: 1})  # 505 answers: the 900-token one is 0.2 %
    assert choose(many, 0, 640) == 208  # p99 160 x 1.25 = 200 -> next multiple of 16
    few = Counter({120: MIN_ANSWERS})
    assert choose(few, 0, 640) == 192  # few answers: 120 x 1.5 = 180 -> 192
    assert choose(Counter({5: 300}), 0, 640) == FLOOR
    assert choose(Counter({600: 300}), 0, 640) == 640  # never above the ceiling
    assert choose(Counter({100: MIN_ANSWERS - 1}), 0, 640) is None  # too few to say


def test_answers_cut_at_max_tokens_hide_the_tail_so_the_ceiling_stays() -> None:
    h = Counter({100: 290, 256: 10})  # 10 of 300 were cut at 256: their length is unknown
    assert choose(h, 10, 640) == 640
    assert choose(h, 2, 640) == 320  # under 1 % cut: p99 (256) x 1.25


def test_resolve_per_variant_falls_back_to_the_pooled_figure() -> None:
    lengths = Lengths()
    for _ in range(300):
        lengths.add("description", 100)
    for _ in range(6):
        lengths.add("no_description", 300)
    by = resolve(lengths, ("description", "no_description"), 640)
    assert by is not None
    assert by["description"] == 128  # its own: 100 x 1.25 = 125 -> 128
    # Six answers are too few alone: the pooled 306 answers (p99 = 300) decide.
    assert by["no_description"] == 384
    assert resolve(Lengths(), ("description",), 640) is None


def test_lengths_round_trip_and_merge() -> None:
    a = Lengths()
    a.add("description", 120)
    a.add("description", 640, truncated=True)
    b = Lengths.from_json(orjson.loads(orjson.dumps(a.to_json())))
    assert b.hist == a.hist and b.cut == a.cut
    b.merge(a)
    assert b.answers("description") == 4 and b.cut["description"] == 2
    assert Lengths.from_json(None).answers() == 0
    with pytest.raises(ValueError):
        Lengths.from_json({"hist": {"description": {"10": -1}}})


def test_by_variant_text_and_config() -> None:
    text = format_by_variant({"no_description": 352, "description": 384})
    assert text == "description:384,no_description:352"
    assert parse_by_variant(text) == {"description": 384, "no_description": 352}
    cfg = Config(max_tokens_by_variant=text)
    assert cfg.max_tokens_for("description") == 384
    assert Config().max_tokens_for("description") == Config().max_tokens
    with pytest.raises(ConfigError, match="variant:tokens"):
        parse_by_variant("description=384")
    assert load_config(env={}, max_tokens="auto").max_tokens_auto
    assert load_config(env={}, max_tokens="512").max_tokens == 512
    with pytest.raises(ConfigError, match="whole number or auto"):
        load_config(env={}, max_tokens="lots")
    with pytest.raises(ConfigError, match="max_tokens_retry"):
        Config(max_tokens_by_variant="description:4000").validate()
    with pytest.raises(ConfigError, match="variants are"):
        Config(max_tokens_by_variant="descripton:300").validate()
    with pytest.raises(ConfigError, match="add --max-tokens auto"):
        load_config(env={}, calibration="runs/a")


# ------------------------------------------------------------------ against the fake

FIELDS = (Field("premise", "string"), Field("hypothesis", "string"),
          Field("label", "class_label", ("entailment", "neutral", "contradiction")))


def _units(n: int) -> list[Unit]:
    return [Unit(f"ds{i}", "default", f"Dataset {i} about topic {i}.", FIELDS, license="mit")
            for i in range(n)]


def _cfg(out: Path, url: str, **kw: Any) -> Config:
    base: dict[str, Any] = dict(out=str(out), base_url=url, quiet=True, free=True,
                                max_in_flight=8, max_tokens_auto=True)
    base.update(kw)
    return Config(**base)


async def test_a_run_sizes_max_tokens_from_a_pilot_records_it_and_keeps_it(
        tmp_path: Path) -> None:
    fake = FakeOpenAI()
    async with serve(fake) as server:
        out = await arun(_cfg(tmp_path / "a", server.url), source=_units(20), build=False)
        assert out.exit_code == EXIT["ok"], out.message
        bodies = [h.body for h in fake.history]
        pilot, rest = bodies[:PILOT_REQUESTS], bodies[PILOT_REQUESTS:]
        assert {b["max_tokens"] for b in pilot} == {Config().max_tokens}
        by = parse_by_variant(out.report["max_tokens"]["by_variant"])
        assert out.report["max_tokens"]["source"] == "pilot"
        assert len(rest) == 40  # every unit asked at the sized figure, the pilot's too
        for b in rest:
            assert b["max_tokens"] in by.values() and b["max_tokens"] < Config().max_tokens
        manifest = orjson.loads((out.out / "manifest.json").read_bytes())
        assert manifest["identity"]["max_tokens_by_variant"] == out.report["max_tokens"][
            "by_variant"]
        cal = orjson.loads((out.out / "calibration.json").read_bytes())
        assert sum(cal["output_tokens"][v]["answers"] for v in cal["output_tokens"]) == 40
        # The fake's answers are far shorter than the default 640, and the figure fits
        # them: nothing was left cut (a rare longer answer is asked again, as before).
        for v, n in by.items():
            assert cal["output_tokens"][v]["p90"] <= n
        assert "truncated_at_max_tokens" not in out.report.get("responses_invalid_by_reason", {})

        # A resume keeps the recorded figure and sends nothing new; one without auto refuses.
        sent = len(fake.history)
        again = await arun(_cfg(tmp_path / "a", server.url), source=_units(20), build=False)
        assert again.report["max_tokens"]["source"] == "recorded"
        assert len(fake.history) == sent
        with pytest.raises(RunDirError, match="--max-tokens auto again"):
            await arun(_cfg(tmp_path / "a", server.url, max_tokens_auto=False),
                       source=_units(20), build=False)
        # A run begun without auto keeps its max_tokens when resumed with auto...
        plain = await arun(_cfg(tmp_path / "p", server.url, max_tokens_auto=False),
                           source=_units(5), build=False)
        kept = await arun(_cfg(tmp_path / "p", server.url), source=_units(5), build=False)
        assert kept.report["max_tokens"] == {"source": "recorded", "by_variant": "",
                                             "answers": 0, "detail": str(plain.out /
                                                                         "manifest.json")}
        # ...and --force-new starts it over, sized.
        fresh = await arun(_cfg(tmp_path / "p", server.url, force_new=True), source=_units(5),
                           build=False)
        assert fresh.report["max_tokens"]["source"] == "pilot"

        # A new run sized from that calibration sends no pilot, and the estimate's worst
        # case uses the same figure.
        sent = len(fake.history)
        cal_run = await arun(_cfg(tmp_path / "b", server.url, calibration=str(out.out)),
                             source=_units(5), build=False)
        assert cal_run.report["max_tokens"]["source"] == "calibration"
        assert len(fake.history) - sent == 10
        sized = parse_by_variant(cal_run.report["max_tokens"]["by_variant"])
        est = estimate(Config(max_tokens_auto=True, licenses="any"), calibration=out.out,
                       source=_units(5))
        assert est.output_tokens["high"] == 5 * sum(sized.values())


async def test_a_pilot_the_server_refuses_leaves_the_ceiling_and_the_engine_adapts(
        tmp_path: Path) -> None:
    """A server that refuses json_schema answers the whole pilot with 400s: the run
    keeps the ceiling (saying why) and goes on as any run does, stepping down."""
    fake = FakeOpenAI()
    refusal = Fault.http(400, {"error": {
        "message": "Invalid parameter: 'response_format' of type 'json_schema' is not "
                   "supported with this model.", "type": "invalid_request_error", "code": None}})
    fake.enqueue(*[refusal] * (PILOT_REQUESTS + 1))  # the pilot's, then the engine's first
    async with serve(fake) as server:
        out = await arun(_cfg(tmp_path / "a", server.url, max_in_flight=1), source=_units(10),
                         build=False)
    assert out.exit_code == EXIT["ok"], out.message
    assert out.report["max_tokens"]["source"] == "ceiling"
    assert f"{PILOT_REQUESTS} bad_request" in out.report["max_tokens"]["detail"]
    assert out.report["session"]["adapted:format=json_object, max_tokens, temperature=sent"] == 1
    assert out.report["units"]["processed"] == 10


async def test_batch_mode_needs_a_calibration_for_auto(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs --calibration"):
        await arun(_cfg(tmp_path / "a", "http://127.0.0.1:9", mode="batch"),
                   source=_units(2), build=False)
