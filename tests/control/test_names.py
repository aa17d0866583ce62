"""MagicDNS-safe given names and tag validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.control.models import InvalidArgument
from meshscale.control.names import (
    MAX_LABEL_LENGTH,
    InvalidName,
    is_valid_label,
    sanitize_hostname,
    unique_given_name,
    validate_given_name,
    validate_tags,
)


@pytest.mark.parametrize(
    ("hostname", "label"),
    [
        ("laptop", "laptop"),
        ("My Laptop", "my-laptop"),
        ("laptop.local", "laptop"),
        ("  --weird__name--  ", "weird-name"),
        ("Ünïcode-PC", "n-code-pc"),
        ("", "node"),
        ("---", "node"),
        ("a" * 80, "a" * 63),
        ("x" * 62 + "-y", "x" * 62),
    ],
)
def test_sanitize_hostname(hostname: str, label: str) -> None:
    assert sanitize_hostname(hostname) == label


@given(st.text(max_size=120))
def test_sanitize_always_gives_a_valid_label(hostname: str) -> None:
    label = sanitize_hostname(hostname)
    assert is_valid_label(label)
    assert len(label) <= MAX_LABEL_LENGTH


@pytest.mark.slow
@given(st.text(max_size=80), st.sets(st.text(max_size=70), max_size=20))
def test_unique_given_name_is_valid_and_free(hostname: str, taken: set[str]) -> None:
    name = unique_given_name(hostname, taken.__contains__)
    assert is_valid_label(name)
    assert name not in taken


def test_collisions_get_numbered_suffixes_that_fit() -> None:
    taken = {"web", "web-1"}
    assert unique_given_name("web", taken.__contains__) == "web-2"
    long = "a" * 63
    assert unique_given_name(long, {long}.__contains__) == "a" * 61 + "-1"


@pytest.mark.parametrize("name", ["Upper", "-lead", "trail-", "dot.ted", "", "a" * 64, "a_b"])
def test_validate_given_name_rejects(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_given_name(name)
    assert issubclass(InvalidName, InvalidArgument)


def test_validate_tags() -> None:
    assert validate_tags(["tag:b", "tag:a", "tag:b"]) == ("tag:a", "tag:b")
    assert validate_tags([]) == ()
    for bad in (["b"], ["tag:"], ["tag:a b"], [f"tag:{i}" for i in range(65)]):
        with pytest.raises(InvalidName):
            validate_tags(bad)
