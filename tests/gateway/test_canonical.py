"""The one canonical JSON, digest and configuration time form every signed document uses."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from cryptography import x509

from gateway import globalconf
from gateway.canonical import canonical_json, der_of, digest_of, format_time, parse_strict_json


def test_members_are_sorted_without_whitespace_and_non_ascii_is_kept() -> None:
    value = {"b": [1, True, None], "a": {"d": "جسر", "c": "x"}}
    assert canonical_json(value) == '{"a":{"c":"x","d":"جسر"},"b":[1,true,null]}'.encode()


@pytest.mark.parametrize("constant", [math.nan, math.inf, -math.inf])
def test_refuses_values_that_are_not_json(constant: float) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        canonical_json({"x": constant})


def test_the_global_configuration_names_the_same_functions() -> None:
    """Code that imports the encodings from ``gateway.globalconf`` gets these very functions."""
    assert globalconf.canonical_json is canonical_json
    assert globalconf.digest_of is digest_of
    assert globalconf.format_time is format_time


def test_digest_and_time_forms() -> None:
    assert digest_of(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    when = dt.datetime(2026, 3, 1, 12, 30, 5, 999_999, tzinfo=dt.timezone(dt.timedelta(hours=3)))
    assert format_time(when) == "2026-03-01T09:30:05Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(dt.datetime(2026, 3, 1))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"a":1,"a":2}', "appears twice"),
        ('{"a":{"b":1,"b":1}}', "appears twice"),
        ('{"a":NaN}', "NaN is not valid JSON"),
        ('{"a":-Infinity}', "-Infinity is not valid JSON"),
    ],
)
def test_strict_parsing_refuses_what_python_would_accept(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_strict_json(text)
    assert parse_strict_json('{"a":[1,"x",null]}') == {"a": [1, "x", None]}


def test_der_of_answers_each_certificate_object_with_its_own_der() -> None:
    from cryptography.hazmat.primitives import serialization

    from tests.pki_factory import FixturePki

    pki = FixturePki.create()
    certificates = [pki.root.cert, pki.issue("one").cert, pki.issue("two").cert]
    for _ in range(2):  # the second round is answered from the memo
        for certificate in certificates:
            assert der_of(certificate) == certificate.public_bytes(serialization.Encoding.DER)
    # A new object with the same DER gets the same bytes.
    again = x509.load_der_x509_certificate(der_of(certificates[1]))
    assert again is not certificates[1]
    assert der_of(again) == der_of(certificates[1])
