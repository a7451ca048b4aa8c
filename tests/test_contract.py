"""The resume contract: input hashing and failure classification, as the HTTP API reference says."""

import pytest

from tidebase.contract import canonical_json, classify_resume_decision, hash_input


def test_hash_of_no_input_is_sha256_of_null():
    assert hash_input(None) == "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b"


def test_canonical_json_sorts_keys_and_keeps_non_ascii_raw():
    value = {"z": True, "a": [1, {"c": None, "b": "é"}]}
    assert canonical_json(value) == '{"a":[1,{"b":"é","c":null}],"z":true}'
    assert hash_input(value) == "73bb09013fd8cd50f389921b3aa37722a1bd203cd23fea14990a37990b0d8761"


def test_hash_is_independent_of_key_order():
    assert hash_input({"a": 1, "b": 2}) == hash_input({"b": 2, "a": 1})
    assert hash_input({"a": 1}) != hash_input({"a": 2})


def test_reference_quirks_are_kept():
    # tuples go through json.dumps as they are; ints sort numerically as original keys
    assert canonical_json((1, {"b": 1, "a": 2})) == '[1,{"b":1,"a":2}]'
    assert canonical_json({10: 1, 9: 2}) == '{"9":2,"10":1}'
    assert canonical_json(float("nan")) == "NaN"
    with pytest.raises(TypeError):
        hash_input({"x": object()})


@pytest.mark.parametrize(
    ("options", "decision"),
    [
        ({"replay": "manual"}, "manual_review"),
        ({"replay": "never"}, "fail_hard"),
        ({"replay": "auto", "sideEffects": ["email.send"]}, "safe_replay"),
        ({"sideEffects": ["ticket.create"]}, "manual_review"),
        ({"sideEffects": ["ticket.create"], "idempotencyKey": "t-1"}, "safe_replay"),
        ({"sideEffects": ["ticket.create"], "idempotencyKey": ""}, "manual_review"),
        ({"sideEffects": ["read"]}, "safe_replay"),
        ({"sideEffects": ["read", "", None]}, "safe_replay"),
        ({"sideEffects": ["read", "db.write"]}, "manual_review"),
        ({"sideEffects": []}, "safe_replay"),
        ({}, "safe_replay"),
        ({"replay": "manual", "idempotencyKey": "k"}, "manual_review"),
    ],
)
def test_classification_table(options, decision):
    assert classify_resume_decision(options) == decision
