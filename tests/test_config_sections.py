"""Config in typed sections: each field in exactly one section, identity declared there."""

from __future__ import annotations

import dataclasses

import pytest

from dynogen.config import (
    BUILD_FIELDS,
    IDENTITY_BEFORE,
    IDENTITY_FIELDS,
    SECTIONS,
    BatchSettings,
    Config,
    LimitSettings,
    Secret,
    load_config,
)


def test_every_field_belongs_to_exactly_one_section() -> None:
    owners: dict[str, list[str]] = {}
    for name, kind in SECTIONS.items():
        for f in dataclasses.fields(kind):
            owners.setdefault(f.name, []).append(name)
    config_fields = [f.name for f in dataclasses.fields(Config)]
    assert sorted(owners) == sorted(config_fields), "a Config field is in no section, or a " \
        "section names a field Config lacks"
    assert {k: v for k, v in owners.items() if len(v) > 1} == {}


def test_identity_is_declared_by_the_sections_and_keeps_its_keys_and_order() -> None:
    # Run directories and collections made by the previous version resume: same keys, and
    # a key added since (prompt_layout) has the value they ran with in IDENTITY_BEFORE
    # (tests/test_prompt_layout.py resumes such a run).
    assert IDENTITY_FIELDS == (
        "model", "variants", "max_tasks_per_unit", "temperature", "seed", "max_tokens",
        "max_tokens_by_variant", "metadata_token_budget", "response_format", "prompt_layout",
        "encoding", "judge", "licenses", "languages", "splits", "max_share",
        "max_tokens_retry", "heldout_fraction", "rows_per_split")
    assert IDENTITY_BEFORE == {"prompt_layout": "per_unit"}
    declared = {f for kind in SECTIONS.values() for f in kind.IDENTITY}
    assert declared == set(IDENTITY_FIELDS)
    assert set(BUILD_FIELDS) <= set(IDENTITY_FIELDS)
    assert set(Config().identity()) == set(IDENTITY_FIELDS)


def test_a_section_is_a_frozen_view_of_the_aggregate() -> None:
    cfg = Config(rpm=600, tpm=90_000, max_retries=2, mode="batch", batch_rounds=5,
                 api_key=Secret("sk-test"))
    assert cfg.limits == LimitSettings(rpm=600, tpm=90_000, max_in_flight=None, max_retries=2,
                                       retry_base_delay=0.5, retry_max_delay=30.0)
    assert cfg.batch == BatchSettings(mode="batch", poll_seconds=60.0, batch_rounds=5,
                                      batch_max_requests=50_000, batch_enqueued_tokens=None)
    assert cfg.server.api_key.get() == "sk-test" and "sk-test" not in repr(cfg.server)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.limits.rpm = 1  # type: ignore[misc]


def test_toml_keys_stay_flat(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "dynogen.toml"
    path.write_text('rpm = 120\nmode = "batch"\nlicenses = ["permissive"]\nout = "runs/x"\n')
    cfg = load_config(path, env={})
    assert (cfg.limits.rpm, cfg.batch.mode, cfg.policies.licenses, cfg.output.out) == (
        120, "batch", "permissive", "runs/x")
