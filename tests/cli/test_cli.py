"""Every CLI command through click's runner; the LLM is the fake server in its own process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from dynogen.cli.main import app
from dynogen.store.journal import iter_jsonl
from dynogen.testing import FakeProcess, start_fake_process

runner = CliRunner()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProcess]:
    with start_fake_process() as proc:
        yield proc


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_help_lists_commands() -> None:
    code, out = invoke("--help")
    assert code == 0
    for cmd in ("run", "estimate", "build", "collect", "export", "serve-local"):
        assert cmd in out


def test_run_build_export_on_bundled_samples(fake: FakeProcess, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text = invoke("run", "--source", "samples", "--out", str(out), "--base-url", fake.url,
                        "--free", "--quiet", "--rows-per-split", "5")
    assert code == 0, text
    assert f"Output: {out}" in text
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["units"]["seen"] == report["units"]["processed"] + report["units"]["skipped"]
    instances = list(iter_jsonl(out / "instances.jsonl"))
    assert instances and report["instances"]["written"] == len(instances)
    assert {"instruction", "input", "output", "task_id", "dataset", "config", "split",
            "license"} <= set(instances[0])
    code, text = invoke("build", "--out", str(out), "--quiet")
    assert code == 0 and "built" in text
    code, text = invoke("export", "--out", str(out), "--format", "parquet")
    assert code == 0, text
    import pyarrow.parquet as pq

    table = pq.read_table(out / "export" / "instances.parquet")
    assert table.num_rows == len(instances)
    code, text = invoke("export", "--out", str(out), "--format", "datasets")
    assert code == 0, text
    assert (out / "export" / "dataset").is_dir()


def test_estimate_json(tmp_path: Path) -> None:
    code, text = invoke("estimate", "--source", "samples", "--model", "gpt-4o-mini", "--json",
                        "--rpm", "500", "--tpm", "200000")
    assert code == 0, text
    est = orjson.loads(text)
    for key in ("units", "requests", "input_tokens", "output_tokens", "cost_usd",
                "minutes_at_limits"):
        assert key in est
    assert est["requests"] == 2 * est["units"] > 0
    assert set(est["output_tokens"]) == {"low", "expected", "high"}
    assert est["output_tokens"]["low"] <= est["output_tokens"]["expected"] <= est[
        "output_tokens"]["high"]
    assert est["cost_usd"]["batch"] < est["cost_usd"]["online"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--model", "my-own-model", "--base-url", "http://127.0.0.1:9/v1"],
         "no price for model 'my-own-model'"),
        (["run", "--model", "gpt-4o-mini"], "no API key"),
        (["run", "--source", "/nonexistent/metadata", "--free", "--base-url",
          "http://127.0.0.1:9/v1"], "not found"),
        (["run", "--free", "--base-url", "http://127.0.0.1:9/v1"], "cannot reach the LLM server"),
        (["run", "--variants", "both", "--free"], "unknown prompt variant"),
        (["build", "--out", "/nonexistent/run"], "holds no run"),
        (["estimate", "--model", "unknown-model"], "--price-in"),
    ],
)
def test_user_errors_are_one_actionable_line(args: list[str], needle: str,
                                             tmp_path: Path) -> None:
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "o")] if args[0] == "run" else args)
    assert result.exit_code == 1, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unwritable_out_fails_before_any_request(fake: FakeProcess, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, text = invoke("run", "--out", str(blocker / "sub"), "--base-url", fake.url, "--free")
    assert code == 1 and "cannot write to output directory" in text


def test_collect_writes_shards_that_run_accepts(tmp_path: Path) -> None:
    code, text = invoke("collect", "--source", "samples", "--out", str(tmp_path / "shards"))
    assert code == 0, text
    shards = sorted((tmp_path / "shards").glob("*.jsonl"))
    assert shards
    code, text = invoke("estimate", "--source", str(tmp_path / "shards"), "--model",
                        "gpt-4o-mini", "--json")
    assert code == 0, text
    code2, text2 = invoke("estimate", "--source", "samples", "--model", "gpt-4o-mini", "--json")
    assert orjson.loads(text)["input_tokens"] == orjson.loads(text2)["input_tokens"]


def test_call_runs_a_batch_file_and_resumes(fake: FakeProcess, tmp_path: Path) -> None:
    reqs = tmp_path / "requests.jsonl"
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "max_tokens": 50,
                  "messages": [{"role": "user", "content": f"Say {i}"}]}}
        for i in range(20)
    ]
    raw = b"".join(orjson.dumps(x) + b"\n" for x in lines) + b"not json\n" + orjson.dumps(
        {"custom_id": "bad-url", "method": "POST", "url": "/v1/embeddings", "body": {}}) + b"\n"
    reqs.write_bytes(raw)
    out = tmp_path / "results.jsonl"
    code, text = invoke("call", str(reqs), "--out", str(out), "--base-url", fake.url,
                        "--model", "gpt-4o-mini", "--quiet")
    assert code == 0, text
    results = list(iter_jsonl(out))
    assert len(results) == 22
    ok = [r for r in results if r["error"] is None]
    assert len(ok) == 20
    assert all(r["response"]["status_code"] == 200 and r["response"]["body"]["choices"]
               for r in ok)
    bad = {r["custom_id"]: r["error"]["code"] for r in results if r["error"]}
    assert bad == {"line-21": "invalid_request", "bad-url": "invalid_request"}
    code, text = invoke("call", str(reqs), "--out", str(out), "--base-url", fake.url,
                        "--model", "gpt-4o-mini", "--quiet")
    assert code == 0 and "22 already done" in text
    assert len(list(iter_jsonl(out))) == 22
