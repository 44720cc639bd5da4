"""The data policies alone: licences, splits, languages, per-source caps (pure rules)."""

from __future__ import annotations

import pytest

from dynogen.config import Config, load_config
from dynogen.errors import ConfigError
from dynogen.policy.languages import LanguagePolicy
from dynogen.policy.licenses import LicensePolicy, license_class, normalize_license
from dynogen.policy.share import share_caps
from dynogen.policy.splits import SplitPolicy, split_kind


@pytest.mark.parametrize(("raw", "cls"), [
    ("mit", "permissive"), ("Apache License 2.0", "permissive"), ("CC BY 4.0", "permissive"),
    ("cc0-1.0", "permissive"), ("cc-by-sa-3.0", "share-alike"), ("gpl-3.0", "share-alike"),
    ("odbl", "share-alike"), ("cc-by-nc-4.0", "non-commercial"), ("c-uda", "non-commercial"),
    ("cc-by-nc-sa-4.0", "non-commercial"), ("cc-by-nd-4.0", "no-derivatives"),
    ("cc-by-nc-nd-4.0", "no-derivatives"), ("unknown", "unknown"), ("other", "other"),
    ("Some license text", "unknown"),
])
def test_licence_classes(raw: str, cls: str) -> None:
    assert license_class(normalize_license(raw)) == cls


def test_default_licence_policy_is_permissive_and_share_alike() -> None:
    p = LicensePolicy.parse(None)
    assert p.refusal("mit") is None and p.refusal("cc-by-sa-4.0") is None
    assert p.refusal("cc-by-nd-4.0") == "license_no_derivatives"
    assert p.refusal("cc-by-nc-4.0") == "license_non_commercial"
    assert p.refusal("unknown") == p.refusal(None) == "license_unknown"
    assert p.refusal("other") == "license_other"
    # A card listing several licences carries all their terms.
    assert p.refusal("cc-by-sa-3.0, gfdl") is None
    assert p.refusal("cc-by-4.0, cc-by-nc-4.0") == "license_non_commercial"


def test_licence_policy_can_be_widened_or_lifted() -> None:
    asked = LicensePolicy.parse("permissive,non-commercial,unknown")
    assert asked.refusal("cc-by-nc-4.0") is None and asked.refusal(None) is None
    # Naming a class never lets no-derivatives in; naming the id does.
    assert LicensePolicy.parse("permissive,no-derivatives").refusal("cc-by-nd-4.0") is not None
    assert LicensePolicy.parse("permissive,cc-by-nd-4.0").refusal("cc-by-nd-4.0") is None
    assert LicensePolicy.parse("any").refusal("cc-by-nc-nd-4.0") is None
    with pytest.raises(ConfigError):
        LicensePolicy.parse(" , ")


@pytest.mark.parametrize(("name", "kind"), [
    ("train", "train"), ("train.9h", "train"), ("auxiliary_train", "train"),
    ("validation", "validation"), ("dev", "validation"), ("validation_matched", "validation"),
    ("test", "test"), ("test.en", "test"), ("challenge_test_covid", "test"), ("testb", "test"),
    ("challenge_train_test", "test"), ("default", "other"), ("invalidated", "other"),
])
def test_split_kinds(name: str, kind: str) -> None:
    assert split_kind(name) == kind


def test_split_policy() -> None:
    p = SplitPolicy.parse(None)
    assert p.select(("train", "validation", "test", "default")) == ("train", "validation")
    assert SplitPolicy.parse("train").select(("train", "dev", "test")) == ("train",)
    assert SplitPolicy.parse("train,test").select(("train", "test")) == ("train", "test")
    assert SplitPolicy.parse("all").select(("test", "x")) == ("test", "x")


def test_language_policy_from_tags_config_names_and_content() -> None:
    en = LanguagePolicy.parse(None)
    assert en.refusal(("language:en",), "default", "string", []) is None
    assert en.refusal(("language:fr",), "default", "string", []) == "language_not_allowed"
    assert en.refusal(("languages:en-US",), "default", "string", []) is None
    # A translation set needs every language it names.
    assert en.refusal(("language:en", "language:de", "multilinguality:translation"), "de-en",
                      "translation", []) == "language_translation"
    # A multilingual card's config named for another language is that language.
    tags = ("language:de", "language:en", "language:fr")
    assert en.refusal(tags, "fr", "string", []) == "language_not_allowed"
    assert en.refusal(tags, "en", "string", []) is None
    german = [{"text": "Der Hafen wurde im Jahr 1832 eröffnet und ist seitdem ein wichtiger "
                       "Ort für den Handel in der ganzen Region gewesen. Viele Schiffe kommen "
                       "jeden Tag an und bringen Waren aus fernen Ländern mit sich."}] * 2
    english = [{"text": "The harbour opened in 1832 and has been an important place for the "
                        "trade of the whole region since then. Many ships arrive every day and "
                        "they bring goods from far countries with them."}] * 2
    assert en.refusal((), "default", "string", german) == "language_content"
    assert en.refusal((), "default", "string", english) is None
    assert LanguagePolicy.parse("any").refusal(("language:fr",), "x", "", german) is None
    assert LanguagePolicy.parse("de,en").refusal(("language:de",), "x", "", german) is None


def test_share_caps_water_level() -> None:
    assert share_caps({"big": 90, "a": 5, "b": 5}, 0.5) == {"big": 10, "a": 5, "b": 5}
    caps = share_caps({f"d{i}": 10 for i in range(10)} | {"huge": 500}, 0.2)
    total = sum(caps.values())
    assert caps["huge"] <= 0.2 * total + 1 and caps["d0"] == 10
    assert share_caps({"only": 7}, 0.1) == {"only": 1}


def test_policies_are_config_fields_toml_keys_and_part_of_the_run_identity(tmp_path) -> None:  # type: ignore[no-untyped-def]
    toml = tmp_path / "c.toml"
    toml.write_text('licenses = ["permissive", "non-commercial"]\nlanguages = "any"\n'
                    'splits = "all"\nmax_share = 0.25\n')
    cfg = load_config(toml, env={})
    assert (cfg.licenses, cfg.languages, cfg.splits, cfg.max_share) == (
        "permissive,non-commercial", "any", "all", 0.25)
    base = Config()
    for change in ({"licenses": "any"}, {"languages": "any"}, {"splits": "all"},
                   {"max_share": 0.5}):
        assert base.with_(**change).prompt_fingerprint() != base.prompt_fingerprint()
    with pytest.raises(ConfigError):
        Config(max_share=0.0).validate()
    with pytest.raises(ConfigError):
        Config(splits="").validate()
