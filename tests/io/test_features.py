"""fields_from_features: both spellings of dataset features, and malformed ones."""

from __future__ import annotations

import json

import pytest
import yaml

from dynogen.io.features import FeaturesError, fields_from_features
from dynogen.units import Field
from tests.helpers import FIXTURES

HF_2022 = FIXTURES / "hf" / "2022"


def V(dtype: str) -> dict:
    return {"dtype": dtype, "id": None, "_type": "Value"}


def seq(feature: object) -> dict:  # the 2022 shape, length and id included
    return {"feature": feature, "length": -1, "id": None, "_type": "Sequence"}


def CL(*names: str) -> dict:
    return {
        "num_classes": len(names),
        "names": list(names),
        "names_file": None,
        "id": None,
        "_type": "ClassLabel",
    }


def one(features: object) -> Field:
    (field,) = fields_from_features(features)
    return field


# --- dataset_infos.json spelling ----------------------------------------------------------


def test_value_and_class_label() -> None:
    fields = fields_from_features(
        {"text": V("string"), "label": CL("neg", "pos"), "score": V("float32")}
    )
    assert fields == (
        Field("text", "string"),
        Field("label", "class_label", ("neg", "pos")),
        Field("score", "float32"),
    )


def test_sequence_of_value_and_of_class_label_keeps_labels() -> None:
    assert one({"tokens": seq(V("string"))}) == Field("tokens", "list[string]")
    assert one({"tags": seq(CL("O", "B-PER"))}) == Field(
        "tags", "list[class_label]", ("O", "B-PER")
    )
    assert one({"x": seq(seq(CL("a")))}) == Field("x", "list[list[class_label]]", ("a",))


def test_sequence_of_dict_is_a_struct_of_lists() -> None:
    # squad's `answers`: datasets turns Sequence({...}) into a dict of lists.
    field = one({"answers": seq({"text": V("string"), "answer_start": V("int32")})})
    assert field == Field("answers", "struct{text: list[string], answer_start: list[int32]}")


def test_list_of_dict_and_bare_dict() -> None:
    assert one({"turns": [{"speaker": V("string"), "n": V("int64")}]}).type == (
        "list[struct{speaker: string, n: int64}]"
    )
    assert one({"meta": {"a": V("string"), "b": seq(V("int32"))}}).type == (
        "struct{a: string, b: list[int32]}"
    )
    assert one({"x": seq([V("string")])}).type == "list[list[string]]"


def test_modern_list_types_in_json() -> None:
    assert one({"x": {"feature": V("string"), "_type": "List"}}).type == "list[string]"
    assert one({"x": {"feature": V("int8"), "_type": "LargeList"}}).type == "list[int8]"
    # List over a dict is a list of structs (unlike the old Sequence).
    assert one({"x": {"feature": {"a": V("string")}, "_type": "List"}}).type == (
        "list[struct{a: string}]"
    )


def test_translations() -> None:
    t = {"languages": ["de", "en"], "id": None, "_type": "Translation"}
    # A Translation column becomes one string field per language, so translation
    # datasets (a quarter of the 2022 corpus) are not skipped for having one field.
    assert fields_from_features({"translation": t}) == (
        Field("translation.de", "string"), Field("translation.en", "string"))
    tv = {
        "languages": ["ar", "fr"],
        "num_languages": 2,
        "id": None,
        "_type": "TranslationVariableLanguages",
    }
    assert one({"translations": tv}).type == "translation[variable]"


@pytest.mark.parametrize("kind,type_", [("Image", "image"), ("Audio", "audio"), ("Video", "video")])
def test_media_is_set_from_the_type(kind: str, type_: str) -> None:
    assert one({"x": {"decode": True, "id": None, "_type": kind}}) == Field("x", type_, media=True)


def test_media_nested_in_lists_and_structs() -> None:
    assert one({"frames": seq({"decode": True, "_type": "Image"})}) == Field(
        "frames", "list[image]", media=True
    )
    assert one({"clip": {"audio": {"_type": "Audio"}, "text": V("string")}}).media
    # a column *named* image but typed as a string is not media
    assert not one({"image": V("string")}).media


def test_arrays_and_class_label_without_names() -> None:
    arr = {"shape": [3, 3], "dtype": "float64", "id": None, "_type": "Array2D"}
    assert one({"m": arr}).type == "array2d[float64]"
    assert one({"l": {"num_classes": 3, "_type": "ClassLabel"}}).labels == ("0", "1", "2")
    assert one({"l": {"names_file": "x.txt", "_type": "ClassLabel"}}) == Field("l", "class_label")


def test_field_names_are_kept_verbatim() -> None:
    names = ["Überschrift", "review id", "meta.source", "id", "label_id", "_type", "1", "日本語"]
    fields = fields_from_features({n: V("string") for n in names})
    assert [f.name for f in fields] == names


def test_a_sub_field_named_type_is_not_mistaken_for_a_type_tag() -> None:
    field = one({"entity": {"_type": V("string"), "text": V("string")}})
    assert field.type == "struct{_type: string, text: string}"


# --- card YAML spelling -------------------------------------------------------------------


def yaml_fields(text: str) -> tuple[Field, ...]:
    return fields_from_features(yaml.safe_load(text))


def test_yaml_class_label_with_string_and_int_keys() -> None:
    fields = yaml_fields("""
- name: label
  dtype:
    class_label:
      names:
        '1': pos
        '0': neg
- name: tags
  sequence:
    class_label:
      names:
        0: O
        1: B-LOC
""")
    assert fields == (
        Field("label", "class_label", ("neg", "pos")),
        Field("tags", "list[class_label]", ("O", "B-LOC")),
    )


def test_yaml_sequences_lists_and_structs() -> None:
    fields = yaml_fields("""
- name: tokens
  sequence: string
- name: answers
  sequence:
  - name: text
    dtype: string
  - name: answer_start
    dtype: int32
- name: turns
  list:
  - name: role
    dtype: string
  - name: content
    dtype: string
- name: meta
  struct:
  - name: url
    dtype: string
  - name: scores
    list: float32
- name: nested
  list:
    list: int64
""")
    assert [f.type for f in fields] == [
        "list[string]",
        "struct{text: list[string], answer_start: list[int32]}",
        "list[struct{role: string, content: string}]",
        "struct{url: string, scores: list[float32]}",
        "list[list[int64]]",
    ]


def test_yaml_media_and_translation() -> None:
    fields = yaml_fields("""
- name: image
  dtype: image
- name: audio
  dtype:
    audio:
      sampling_rate: 16000
- name: translation
  dtype:
    translation:
      languages:
      - en
      - fr
""")
    assert fields == (
        Field("image", "image", media=True),
        Field("audio", "audio", media=True),
        Field("translation.en", "string"),
        Field("translation.fr", "string"),
    )


@pytest.mark.parametrize(
    "folder", sorted(p.name for p in HF_2022.iterdir() if (p / "dataset_infos.json").exists())
)
def test_both_spellings_agree_on_real_features(folder: str) -> None:
    """The YAML that `datasets` itself writes for a config reads as the same fields."""
    import datasets  # a dependency: missing, the test fails rather than skips
    infos = json.loads((HF_2022 / folder / "dataset_infos.json").read_text(encoding="utf-8"))
    for info in infos.values():
        as_yaml = datasets.Features.from_dict(info["features"])._to_yaml_list()
        assert fields_from_features(as_yaml) == fields_from_features(info["features"])


# --- malformed ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "features,needle",
    [
        ("text: string", "mapping or a list"),
        ({"text": {"_type": "Value"}}, "text: Value needs a dtype"),
        ({"text": {"dtype": "string", "_type": "Strnig"}}, "unknown feature type 'Strnig'"),
        ({"label": {"names": "neg,pos", "_type": "ClassLabel"}}, "names must be a list"),
        ({"x": {"_type": "Sequence"}}, "has no 'feature'"),
        ({"x": [V("string"), V("int32")]}, "exactly one item type"),
        ({"x": 3}, "expected a feature object"),
        ({"t": {"languages": "en", "_type": "Translation"}}, "list of language codes"),
        ([{"dtype": "string"}], "has no 'name'"),
        ([{"name": "a", "dtype": "string"}, {"name": "a", "dtype": "int32"}], "appears twice"),
        ([{"name": "a"}], "a: expected a type"),
        ([{"name": None, "dtype": "string"}], "name must be text"),
        (
            [{"name": "l", "dtype": {"class_label": {"names": {"0": "a", "2": "b"}}}}],
            "ids must run",
        ),
        ([{"name": "l", "dtype": {"class_label": {"names": {"x": "a"}}}}], "keyed by integer ids"),
        ([{"name": "s", "struct": "oops"}], "struct must be a list"),
        (["text"], "expected a mapping"),
    ],
)
def test_malformed_features_raise_with_a_message(features: object, needle: str) -> None:
    with pytest.raises(FeaturesError) as info:
        fields_from_features(features)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_empty_features_are_valid_and_empty() -> None:
    assert fields_from_features({}) == ()
    assert fields_from_features([]) == ()
