"""Dataset features (column types) to ``Field``s.

Two spellings of the same thing reach us: the JSON dict of ``dataset_infos.json``
(``{"label": {"names": [...], "_type": "ClassLabel"}}``, with ``Sequence`` and
bare dicts and ``[x]`` lists nested freely) and the YAML list of a card's
``dataset_info.features`` (``- name: label`` / ``dtype: {class_label: ...}``,
``sequence:``, ``list:``, ``struct:``). Both are read by one dispatcher keyed on
the normalised type name, so a type added to one spelling works in the other.

This module does no I/O and does not import ``datasets``: parsing 5,000
configurations must take milliseconds, and a newer ``datasets`` must not be
able to reject metadata we can still describe to an LLM.

>>> [f.type for f in fields_from_features({"text": {"dtype": "string", "_type": "Value"}})]
['string']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynogen.errors import MetadataError
from dynogen.units import Field

__all__ = ["FeaturesError", "fields_from_features"]

# type string, labels (kept for class labels and lists of them), media flag
_Typed = tuple[str, tuple[str, ...], bool]

# Normalised type name (lower case, no underscores) -> readable type string.
_MEDIA = {
    "image": "image",
    "audio": "audio",
    "video": "video",
    "pdf": "pdf",
    "nifti": "nifti",
    "mesh": "mesh",
}
_PLAIN = {"json": "json", "biosequence": "bio_sequence", "biostructure": "bio_structure"}
_ARRAYS = {"array2d": 2, "array3d": 3, "array4d": 4, "array5d": 5}
_LISTS = ("sequence", "list", "largelist")


class FeaturesError(MetadataError):
    """Features we cannot read; the message says where (``answers.text``) and why."""


def fields_from_features(features: Any) -> tuple[Field, ...]:
    """Top-level columns of either spelling, in the order given, names kept verbatim.

    Raises ``FeaturesError`` for anything malformed: callers turn it into a
    ``Skipped(reason="invalid_metadata")`` rather than guessing.
    """
    if isinstance(features, Mapping):
        items: list[tuple[str, _Typed]] = []
        for name, spec in features.items():
            items.append((_name(name, "features"), _legacy(spec, str(name))))
    elif isinstance(features, list):
        items = [(name, typed) for name, typed in _yaml_items(features, "")]
    else:
        raise FeaturesError(f"features must be a mapping or a list, not {_kind(features)}")
    out: list[Field] = []
    for name, (t, labels, media) in items:
        if t.startswith("translation[") and t != "translation[variable]":
            # One column holding {lang: text}: show each language as its own field
            # ("translation.de"), so translation datasets yield translation tasks.
            out.extend(Field(f"{name}.{lang}", "string") for lang in t[12:-1].split(","))
        else:
            out.append(Field(name=name, type=t, labels=labels, media=media))
    return tuple(out)


# --- dataset_infos.json (dict) spelling -------------------------------------------------


def _legacy(spec: Any, where: str) -> _Typed:
    if isinstance(spec, list):  # [x] means "list of x"
        if len(spec) != 1:
            raise FeaturesError(
                f"{where}: a list feature must hold exactly one item type, got {len(spec)}"
            )
        return _list_of(_legacy(spec[0], where + "[]"))
    if not isinstance(spec, Mapping):
        raise FeaturesError(f"{where}: expected a feature object, got {_kind(spec)}")
    kind = spec.get("_type")
    if not isinstance(kind, str):  # a dict of sub-features (a field may itself be named "_type")
        return _struct([(_name(k, where), _legacy(v, f"{where}.{k}")) for k, v in spec.items()])
    key = _norm(kind)
    if key in _LISTS:
        if "feature" not in spec:
            raise FeaturesError(f"{where}: {kind} has no 'feature'")
        inner = spec["feature"]
        if (
            key == "sequence"
            and isinstance(inner, Mapping)
            and not isinstance(inner.get("_type"), str)
        ):
            # Sequence of a dict is a dict of lists (TFDS compatibility in `datasets`).
            return _struct(
                [(_name(k, where), _list_of(_legacy(v, f"{where}.{k}"))) for k, v in inner.items()]
            )
        return _list_of(_legacy(inner, where + "[]"))
    if key == "value":
        return (_dtype(spec.get("dtype"), where), (), False)
    return _named_type(key, kind, spec, where)


# --- card YAML (list) spelling ------------------------------------------------------------


def _yaml_items(items: list[Any], where: str) -> list[tuple[str, _Typed]]:
    out: list[tuple[str, _Typed]] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise FeaturesError(
                f"{where or 'features'}[{i}]: expected a mapping with a 'name', got {_kind(item)}"
            )
        if "name" not in item:
            raise FeaturesError(f"{where or 'features'}[{i}]: feature has no 'name'")
        name = _name(item["name"], where or "features")
        if name in seen:
            raise FeaturesError(f"{where or 'features'}: field name {name!r} appears twice")
        seen.add(name)
        spec = {k: v for k, v in item.items() if k != "name"}
        out.append((name, _yaml(spec, f"{where}.{name}" if where else name)))
    return out


def _yaml(spec: Any, where: str) -> _Typed:
    if isinstance(spec, str):
        return _dtype_name(spec, where)
    if isinstance(spec, list):  # a bare list of named items is a struct
        return _struct(_yaml_items(spec, where))
    if not isinstance(spec, Mapping) or not spec:
        raise FeaturesError(f"{where}: expected a type, got {_kind(spec)}")
    if "dtype" in spec:
        dtype = spec["dtype"]
        return _dtype_name(dtype, where) if isinstance(dtype, str) else _yaml(dtype, where)
    for key in ("sequence", "list", "large_list"):
        if key in spec:
            inner = spec[key]
            if key == "sequence" and isinstance(inner, list):
                # `sequence:` over named items: a dict of lists, as in the dict spelling.
                return _struct([(n, _list_of(t)) for n, t in _yaml_items(inner, where)])
            return _list_of(_yaml(inner, where + "[]"))
    if "struct" in spec:
        inner = spec["struct"]
        if not isinstance(inner, list):
            raise FeaturesError(
                f"{where}: struct must be a list of named fields, got {_kind(inner)}"
            )
        return _struct(_yaml_items(inner, where))
    kind = next(iter(spec))
    params = spec[kind]
    if params is None:
        params = {}
    if not isinstance(kind, str) or not isinstance(params, Mapping):
        raise FeaturesError(f"{where}: cannot read type {kind!r}")
    return _named_type(_norm(kind), kind, params, where)


def _dtype_name(name: str, where: str) -> _Typed:
    """A bare ``dtype: x``: a Value dtype, or a parameterless type such as ``image``."""
    key = _norm(name)
    if key in _MEDIA or key in _PLAIN or key in ("classlabel", "translationvariablelanguages"):
        return _named_type(key, name, {}, where)
    return (_dtype(name, where), (), False)


# --- shared ---------------------------------------------------------------------------------


def _named_type(key: str, kind: str, params: Mapping[str, Any], where: str) -> _Typed:
    if key == "classlabel":
        return ("class_label", _label_names(params, where), False)
    if key == "translation":
        langs = params.get("languages")
        if not isinstance(langs, list) or not all(isinstance(x, str) for x in langs):
            raise FeaturesError(f"{where}: Translation needs a list of language codes")
        return (f"translation[{','.join(langs)}]", (), False)
    if key == "translationvariablelanguages":
        return ("translation[variable]", (), False)
    if key in _MEDIA:
        return (_MEDIA[key], (), True)
    if key in _PLAIN:
        return (_PLAIN[key], (), False)
    if key in _ARRAYS:
        return (f"array{_ARRAYS[key]}d[{_dtype(params.get('dtype'), where)}]", (), False)
    raise FeaturesError(f"{where}: unknown feature type {kind!r}")


def _label_names(params: Mapping[str, Any], where: str) -> tuple[str, ...]:
    names = params.get("names")
    if isinstance(names, list):
        return tuple(_label(x) for x in names)
    if isinstance(names, Mapping):  # YAML: {'0': neg, '1': pos}, keys maybe ints
        try:
            ordered = sorted(names.items(), key=lambda kv: int(kv[0]))
        except (TypeError, ValueError):
            raise FeaturesError(
                f"{where}: class_label names must be keyed by integer ids"
            ) from None
        ids = [int(k) for k, _ in ordered]
        if ids != list(range(len(ids))):
            raise FeaturesError(f"{where}: class_label ids must run 0..{len(ids) - 1}, got {ids}")
        return tuple(_label(v) for _, v in ordered)
    if names is not None:
        raise FeaturesError(
            f"{where}: class_label names must be a list or a mapping, got {_kind(names)}"
        )
    count = params.get("num_classes")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return tuple(str(i) for i in range(count))
    # names_file only, or nothing: still a label column, with unknown names.
    return ()


def _label(x: Any) -> str:
    if isinstance(x, (str, int, float)) and not isinstance(x, bool):
        return str(x)
    if isinstance(x, bool):
        return "true" if x else "false"
    raise FeaturesError(f"class label name must be text, got {_kind(x)}")


def _list_of(inner: _Typed) -> _Typed:
    t, labels, media = inner
    return (f"list[{t}]", labels if t.endswith("class_label]") or t == "class_label" else (), media)


def _struct(items: list[tuple[str, _Typed]]) -> _Typed:
    body = ", ".join(f"{name}: {t}" for name, (t, _, _) in items)
    return (f"struct{{{body}}}", (), any(media for _, (_, _, media) in items))


def _dtype(dtype: Any, where: str) -> str:
    if not isinstance(dtype, str) or not dtype.strip():
        raise FeaturesError(f"{where}: Value needs a dtype string, got {_kind(dtype)}")
    return dtype.strip()


def _name(name: Any, where: str) -> str:
    if isinstance(name, str):
        return name
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        return str(name)  # YAML turned `name: 1` into an int; the column is still "1"
    raise FeaturesError(f"{where}: field name must be text, got {_kind(name)}")


def _norm(kind: str) -> str:
    return kind.replace("_", "").lower()


def _kind(x: Any) -> str:
    if x is None:
        return "nothing"
    return f"{type(x).__name__} {x!r}"[:80]
