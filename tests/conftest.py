"""Shared fixtures. Tests never reach the network: the Hub is offline by setting."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("OPENAI_BASE_URL", None)

import pytest  # noqa: E402

from dynogen.units import Field, Unit  # noqa: E402


@pytest.fixture
def glue_unit() -> Unit:
    return Unit(
        dataset="glue",
        config="cola",
        description="The Corpus of Linguistic Acceptability: sentences labelled acceptable or not.",
        fields=(
            Field("sentence", "string"),
            Field("label", "class_label", ("unacceptable", "acceptable")),
            Field("idx", "int32"),
        ),
        license="cc-by-4.0",
    )
