"""Step output encoding: what round-trips, and what fails at record time naming the step."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import uuid

import pydantic
import pytest

from tidebase import codec
from tidebase.errors import SerializationError


class Finding(pydantic.BaseModel):
    title: str
    score: float
    tags: list[str] = []


@dataclasses.dataclass
class Draft:
    title: str
    words: int
    finding: Finding | None = None


def roundtrip(value):
    stored = json.loads(json.dumps(codec.encode(value)))
    return codec.decode(stored)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        3,
        2.5,
        "text",
        [1, "a", None],
        {"a": {"b": [1, 2]}},
        (1, 2),
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        dt.date(2026, 1, 2),
        uuid.UUID(int=7),
        decimal.Decimal("1.10"),
        b"\x00\xff",
        {"__tidebase__": "looks like a tag"},
    ],
)
def test_plain_and_tagged_values_roundtrip(value):
    assert roundtrip(value) == value


def test_plain_json_is_stored_as_is():
    assert codec.encode({"a": [1, "x"]}) == {"a": [1, "x"]}


def test_pydantic_and_dataclass_roundtrip():
    draft = Draft("t", 3, Finding(title="f", score=0.5, tags=["x"]))
    back = roundtrip(draft)
    assert back == draft
    assert isinstance(back.finding, Finding)


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({"k": object()}, "object"),
        ({"s": {1, 2}}, "set"),
        (float("nan"), "float"),
        ({1: "int key"}, "int"),
        (lambda: 1, "function"),
    ],
)
def test_unserializable_values_name_the_type(value, type_name):
    with pytest.raises(SerializationError) as info:
        codec.encode(value, what="output of step 'draft'")
    message = str(info.value)
    assert "output of step 'draft'" in message
    assert type_name in message


def test_local_classes_fail_at_record_time():
    class Local(pydantic.BaseModel):
        x: int

    with pytest.raises(SerializationError, match="module level"):
        codec.encode(Local(x=1), what="output of step 's'")
