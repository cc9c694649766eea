"""Canonical bytes: RFC 8785 vectors, NFC, the safe-integer range and the float rule."""

import datetime as dt
import enum
import json
import math
import unicodedata
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from models.canonical import (
    MAX_NESTING_DEPTH,
    MAX_SAFE_INTEGER,
    CanonicalizationError,
    canonical_bytes,
    normalize_text,
    sha256,
)
from models.errors import InvalidInput


def test_rfc8785_number_vector() -> None:
    numbers = [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001]
    assert canonical_bytes({"numbers": numbers}) == b'{"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27]}'


def test_rfc8785_section_3_2_2_example() -> None:
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"\u002f",
        "literals": [None, True, False],
    }
    assert canonical_bytes(value) == (
        b'{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        b'"string":"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )


def test_keys_sort_by_utf16_code_units() -> None:
    """RFC 8785 §3.2.3, minus U+FB33, which NFC rewrites (see the next test)."""
    keys = ["\u20ac", "\r", "1", "\U0001f600", "\u0080", "\u00f6"]
    order = list(json.loads(canonical_bytes({key: i for i, key in enumerate(keys)})))
    # U+1F600 is the surrogate pair D83D DE00, so it sorts before U+FB33 and after U+20AC.
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600"]


def test_composition_exclusion_key_is_normalized_before_sorting() -> None:
    """U+FB33 is a composition exclusion: NFC decomposes it to U+05D3 U+05BC."""
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    order = list(json.loads(canonical_bytes({key: i for i, key in enumerate(keys)})))
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u05d3\u05bc", "\u20ac", "\U0001f600"]


def test_nfc_and_nfd_inputs_give_identical_bytes() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert composed != decomposed
    assert canonical_bytes({composed: [composed]}) == canonical_bytes({decomposed: [decomposed]})
    assert normalize_text(decomposed) == composed


def test_keys_equal_after_normalization_are_rejected() -> None:
    with pytest.raises(CanonicalizationError, match="NFC"):
        canonical_bytes({"caf\u00e9": 1, "cafe\u0301": 2})


def test_lone_surrogate_is_rejected_with_its_path() -> None:
    with pytest.raises(CanonicalizationError) as caught:
        canonical_bytes({"name": ["ok", "\ud83d"]})
    assert caught.value.extensions["field"] == "$.name[1]"


def test_safe_integer_bounds() -> None:
    assert canonical_bytes(MAX_SAFE_INTEGER) == b"9007199254740991"
    assert canonical_bytes(-MAX_SAFE_INTEGER) == b"-9007199254740991"


@pytest.mark.parametrize("value", [2**53, -(2**53), 10**30])
def test_unsafe_integers_are_rejected_with_the_path_named(value: int) -> None:
    with pytest.raises(CanonicalizationError) as caught:
        canonical_bytes({"entries": [{"weird key": 1}, {"weird key": value}]})
    error = caught.value
    assert isinstance(error, InvalidInput)
    assert error.extensions["field"] == "$.entries[1]['weird key']"
    assert "$.entries[1]['weird key']" in str(error)
    assert error.problem()["type"] == "/problems/not-canonicalizable"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_rejected(value: float) -> None:
    with pytest.raises(CanonicalizationError) as caught:
        canonical_bytes({"x": value})
    assert caught.value.extensions["field"] == "$.x"


def test_integral_floats_are_written_as_integers() -> None:
    assert canonical_bytes(1.0) == canonical_bytes(1) == b"1"
    assert canonical_bytes(-0.0) == b"0"
    assert canonical_bytes([2.5, 1e21, 1e-7]) == b"[2.5,1e+21,1e-7]"


@pytest.mark.parametrize("value", [2.0**53, -(2.0**53), 1e20])
def test_integral_floats_that_would_read_back_as_unsafe_integers_are_rejected(value: float) -> None:
    with pytest.raises(CanonicalizationError) as caught:
        canonical_bytes({"x": value})
    assert caught.value.extensions["field"] == "$.x"


def test_integral_floats_written_with_an_exponent_are_accepted() -> None:
    assert canonical_bytes([1e21, -1e30, 9007199254740991.0]) == b"[1e+21,-1e+30,9007199254740991]"


def test_bools_are_not_integers() -> None:
    assert canonical_bytes([True, False, 1, 0]) == b"[true,false,1,0]"
    assert canonical_bytes({"a": True}) != canonical_bytes({"a": 1})


def test_tuples_become_arrays_and_none_null() -> None:
    assert canonical_bytes((1, None, ("a",))) == b'[1,null,["a"]]'


def test_non_string_keys_are_rejected() -> None:
    with pytest.raises(CanonicalizationError) as caught:
        canonical_bytes({"outer": {1: "x"}})
    assert caught.value.extensions["field"] == "$.outer"


class Level(enum.Enum):
    SENIOR = "senior"


class Rank(enum.IntEnum):
    THREE = 3


def test_model_values_become_strings() -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    when = dt.datetime(2024, 5, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    value = {"id": ident, "at": when, "on": dt.date(2024, 5, 1), "level": Level.SENIOR, "rank": Rank.THREE}
    assert json.loads(canonical_bytes(value)) == {
        "id": "12345678-1234-5678-1234-567812345678",
        "at": "2024-05-01T12:00:00.000000Z",
        "on": "2024-05-01",
        "level": "senior",
        "rank": 3,
    }


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(CanonicalizationError, match="timezone-aware"):
        canonical_bytes({"at": dt.datetime(2024, 5, 1)})


@pytest.mark.parametrize("value", [Decimal("1.5"), b"bytes", {1, 2}, object()])
def test_types_without_a_canonical_form_are_rejected(value: Any) -> None:
    with pytest.raises(CanonicalizationError) as caught:
        canonical_bytes([value])
    assert caught.value.extensions["field"] == "$[0]"


def test_input_is_not_modified() -> None:
    value = {"k": ["cafe\u0301", (1, 2)]}
    canonical_bytes(value)
    assert value == {"k": ["cafe\u0301", (1, 2)]}


def _nested_lists(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_nesting_up_to_the_limit_is_accepted() -> None:
    depth = MAX_NESTING_DEPTH
    assert canonical_bytes(_nested_lists(depth)) == b"[" * depth + b"]" * depth
    assert canonical_bytes({"a": _nested_lists(depth - 1)}) == b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize("depth", [MAX_NESTING_DEPTH + 1, 600, 100_000])
def test_nesting_beyond_the_limit_is_rejected_with_the_path_named(depth: int) -> None:
    with pytest.raises(CanonicalizationError) as caught:
        canonical_bytes({"attributes": {"a": _nested_lists(depth)}})
    assert caught.value.extensions["field"] == "$.attributes.a" + "[0]" * (MAX_NESTING_DEPTH - 2)


def test_sha256_helper() -> None:
    assert sha256(b"abc").hex().startswith("ba7816bf8f01cfea")


SAFE_INTS = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
FINITE_FLOATS = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda x: not (x.is_integer() and MAX_SAFE_INTEGER < abs(x) < 1e21)
)
TEXT = st.text(st.characters(exclude_categories=("Cs",)))
JSON_LIKE = st.recursive(
    st.none() | st.booleans() | SAFE_INTS | FINITE_FLOATS | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=20,
)


def _nfc(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, list):
        return [_nfc(item) for item in value]
    if isinstance(value, dict):
        return {_nfc(key): _nfc(item) for key, item in value.items()}
    return value


def _has_nfc_key_collision(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_nfc_key_collision(item) for item in value)
    if isinstance(value, dict):
        return len({_nfc(key) for key in value}) < len(value) or any(
            _has_nfc_key_collision(item) for item in value.values()
        )
    return False


@given(JSON_LIKE)
def test_round_trip_and_idempotence(value: Any) -> None:
    assume(not _has_nfc_key_collision(value))
    encoded = canonical_bytes(value)
    parsed = json.loads(encoded)
    assert parsed == _nfc(value)
    assert canonical_bytes(parsed) == encoded


# The audit's fast path must agree with a byte comparison of real canonical JSON.
from hypothesis import given as _given, strategies as _st  # noqa: E402

from models.canonical import canonical_bytes as _canonical, matches_canonical  # noqa: E402

_json_leaf = _st.one_of(
    _st.none(), _st.booleans(), _st.integers(-(2**53) + 1, 2**53 - 1),
    _st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15), _st.text(max_size=8),
)
_json = _st.recursive(_json_leaf, lambda kids: _st.one_of(
    _st.lists(kids, max_size=4), _st.dictionaries(_st.text(max_size=6), kids, max_size=4)), max_leaves=12)


@_given(_json, _json)
def test_matches_canonical_agrees_with_comparing_canonical_bytes(stored_value, other) -> None:
    try:
        stored = _canonical(stored_value)
    except Exception:  # noqa: BLE001 - values canonicalization refuses are out of scope
        return
    assert matches_canonical(stored_value, stored)
    try:
        expected = _canonical(other) == stored
    except Exception:  # noqa: BLE001
        expected = False
    assert matches_canonical(other, stored) == expected


def test_matches_canonical_tells_true_from_one_and_sees_nfd_as_nfc() -> None:
    assert not matches_canonical({"a": True}, _canonical({"a": 1}))
    assert matches_canonical({"a": 1.0}, _canonical({"a": 1}))
    assert matches_canonical({"n": "e\u0301"}, _canonical({"n": "\u00e9"}))


_any_json = _st.recursive(
    _st.one_of(_st.none(), _st.booleans(), _st.integers(-(2**53) + 1, 2**53 - 1),
               _st.floats(allow_nan=False, allow_infinity=False), _st.text()),
    lambda kids: _st.one_of(_st.lists(kids, max_size=4), _st.dictionaries(_st.text(max_size=4), kids, max_size=5)),
    max_leaves=15,
)


@_given(_any_json)
@__import__("hypothesis").settings(max_examples=500)
def test_the_fast_path_writes_exactly_what_rfc8785_writes(value) -> None:
    import rfc8785

    from models.canonical import CanonicalizationError, to_json_tree

    try:
        tree = to_json_tree(value)
    except CanonicalizationError:
        return
    assert _canonical(value) == rfc8785.dumps(tree)


def test_fast_path_edge_cases_match_rfc8785() -> None:
    import rfc8785

    for value in [{"\U0001f600": 1, "\ufb01": 2, "a": 3}, {"c": "\x00\x1f\x7f\u2028\"\\"}, [1.5, 1e21, -0.0]]:
        assert _canonical(value) == rfc8785.dumps(value)


def test_a_value_nested_past_the_recursion_limit_does_not_match_instead_of_crashing() -> None:
    # Only a row edited through SQL can hold this; the audit must report it, not crash.
    value: list = []
    for _ in range(5_000):
        value = [value]
    assert matches_canonical(value, b"[]") is False


@pytest.mark.parametrize("name, shown", [
    ("\x1b[2K\rreport signature valid", "$['\\x1b[2K\\x0dreport signature valid']"),
    ("total\n", "$['total\\x0a']"),  # a name that is an identifier but for its last character
    ("o'k\\\u202e", "$['o\\'k\\\\\\u202e']"),
    ("\U000e0001x", "$['\\U000e0001x']"),
])
def test_an_error_path_shows_unprintable_characters_in_member_names_escaped(name, shown) -> None:
    """A rejected file's member names reach a terminal in the error: ESC[2K\\r could erase the
    line saying it is not valid and print a line of its own."""
    with pytest.raises(CanonicalizationError) as raised:
        canonical_bytes({name: 1e20})
    assert raised.value.args[0] == f"{shown}: 1e+20 would be written as an integer outside ±(2**53 - 1)"
    assert all(ch.isprintable() for ch in raised.value.args[0])
