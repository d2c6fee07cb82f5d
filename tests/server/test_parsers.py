"""Property tests of the input parsers: whatever a client sends, the answer is a value or a clear 4xx."""

import math
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.errors import ApiError
from server.replicate_api import MAX_WAIT, SCHEMAS, parse_duration, parse_wait, validate
from server.settings import Settings, _convert

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_prefer_header_never_fails(header: str) -> None:
    wait = parse_wait(header)
    assert wait is None or 1 <= wait <= MAX_WAIT


@pytest.mark.parametrize("header,expected", [("wait", 60), ("wait=5", 5), ("respond-async, wait=90", 60),
                                             ("wait=0", 1), ("wait=x", None), ("", None)])
def test_prefer_header_examples(header: str, expected: float | None) -> None:
    assert parse_wait(header) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.digits + "hms. x", max_size=12))
def test_cancel_after_is_a_duration_of_at_least_5_s_or_a_422(text: str) -> None:
    try:
        assert parse_duration(text) >= 5
    except ApiError as err:
        assert err.status == 422


@pytest.mark.parametrize("text,seconds", [("30", 30), ("30s", 30), ("5m", 300), ("1h30m45s", 5445), ("1s", 5)])
def test_cancel_after_examples(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SCHEMAS)), st.dictionaries(
    st.sampled_from(["prompt", "input_image", "aspect_ratio", "num_inference_steps", "guidance", "seed",
                     "output_format", "output_quality", "go_fast", "safety_tolerance", "other"]), json_values))
def test_schema_validation_gives_values_or_a_422_naming_the_fields(model: str, values: dict) -> None:
    try:
        out = validate(SCHEMAS[model], values)
    except ApiError as err:
        assert err.status == 422 and err.invalid_fields
        assert all(f.field == "input" or f.field.startswith("input.") for f in err.invalid_fields)
    else:
        assert isinstance(out["prompt"], str) and set(out) == set(SCHEMAS[model])
        assert all(math.isfinite(v) for v in out.values() if isinstance(v, float))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_settings_values_convert_or_say_which_setting(value: str) -> None:
    for name, annotation in (("port", int), ("megapixels", float), ("insecure_no_auth", bool),
                             ("api_keys", tuple[str, ...]), ("public_url", str | None)):
        try:
            _convert(name, value, annotation)
        except ValueError as err:
            assert name in str(err)
    assert Settings().port == 8000
