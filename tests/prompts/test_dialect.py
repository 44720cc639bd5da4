from __future__ import annotations

from dynogen.prompts.dialect import Dialect, adapt


def test_each_refusal_changes_one_thing() -> None:
    d = Dialect()
    d1 = adapt(d, "Unsupported parameter: 'max_tokens' ... Use 'max_completion_tokens' instead.")
    assert d1 == Dialect(token_param="max_completion_tokens")
    d2 = adapt(d1, "Unsupported value: 'temperature' does not support 0 with this model.")
    assert d2 == Dialect(token_param="max_completion_tokens", temperature=False)
    d3 = adapt(d2, "'response_format' of type 'json_schema' is not supported")
    assert d3 is not None and d3.format == "json_object"
    d4 = adapt(d3, "response_format json_object not supported")
    assert d4 is not None and d4.format == "none"
    assert adapt(d4, "response_format nope") is None
    assert adapt(d, "The model `x` does not exist") is None
