from __future__ import annotations

import pytest

from dynogen.tasks.parsing import parse_tasks

GOOD = '{"tasks": [{"instruction": "Do X.", "input_fields": ["a"], "output_field": "b"}]}'


def test_plain_json() -> None:
    r = parse_tasks(GOOD)
    assert r.error is None
    assert r.tasks == [{"instruction": "Do X.", "input_fields": ["a"], "output_field": "b"}]


@pytest.mark.parametrize(
    "text",
    [
        f"```json\n{GOOD}\n```",
        f"Sure! Here are the tasks:\n{GOOD}\nHope this helps.",
        '[{"instruction": "Do X.", "input_fields": ["a"], "output_field": "b"}]',
        '{"instruction": "Do X.", "inputs": "a", "output": "b"}',
        '{"tasks": [{"task": "Do X.", "input_fields": "a", "output_field": ["b"]}]}',
    ],
)
def test_tolerant_forms(text: str) -> None:
    r = parse_tasks(text)
    assert r.error is None, r
    assert r.tasks[0]["input_fields"] == ["a"]
    assert r.tasks[0]["output_field"] == "b"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty_answer"),
        (None, "empty_answer"),
        ("I cannot help with that.", "not_json"),
        ('{"tasks": {"x": 1}}', "wrong_shape"),
        ('{"tasks": [1, 2]}', "wrong_shape"),
        ('"just a string"', "wrong_shape"),
        ('{"tasks": [{"instruction": "cut', "not_json"),
    ],
)
def test_reasons(text: str | None, reason: str) -> None:
    r = parse_tasks(text)
    assert r.tasks == []
    assert r.error == reason


def test_malformed_records_counted_next_to_good_ones() -> None:
    text = ('{"tasks": [{"instruction": "ok", "input_fields": ["a"], "output_field": "b"},'
            ' {"instruction": 3}, "junk"]}')
    r = parse_tasks(text)
    assert len(r.tasks) == 1
    assert r.malformed == 2
