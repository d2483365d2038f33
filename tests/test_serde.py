"""The default JSON serializer: the bytes of the standard library's encoder with the same
options, and every value it cannot encode refused with a clear error, nothing written."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

import trio_jobqueue as jq

_REFERENCE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        12345,
        10**30,
        -0.0,
        1e300,
        0.1,
        "",
        'h\u00e9llo \u2028 "quoted" \\ \n \x00',
        "\U0001f600",
        [],
        {},
        [1, 2.5, None, True, "x"],
        {"a": [1, {"b": {"c": "d"}}], "1": 2, "k": float(2**60)},
        {1: "int key", 2.5: "float key", False: "bool key", None: "none key"},
    ],
)
def test_json_payloads_encode_as_the_standard_encoder_does(value: Any) -> None:
    """JsonSerializer.dumps gives exactly the standard library's compact UTF-8 JSON."""
    assert jq.JsonSerializer().dumps(value) == _REFERENCE.encode(value).encode()


@pytest.mark.parametrize(
    "text",
    ['{"i":1}', ' {"i": 1} ', "null", "\n[1, 2.5]\t", '"x"', "NaN", "-Infinity", "0", "{}"],
)
def test_json_loads_as_the_standard_decoder_does(text: str) -> None:
    """JsonSerializer.loads decodes what the standard library's decoder decodes, with or
    without whitespace around the value."""
    got = jq.JsonSerializer().loads(text.encode())
    want = json.JSONDecoder().decode(text)
    assert got == want or (math.isnan(got) and math.isnan(want))


@pytest.mark.parametrize("text", ["", " ", "1 2", "{", '{"a":}', "[1,]", "nul", '"open'])
def test_json_loads_refuses_as_the_standard_decoder_does(text: str) -> None:
    """Text that is not one JSON value fails with the standard library's error message."""
    with pytest.raises(json.JSONDecodeError) as expected:
        json.JSONDecoder().decode(text)
    with pytest.raises(json.JSONDecodeError) as got:
        jq.JsonSerializer().loads(text.encode())
    assert str(got.value) == str(expected.value)


async def test_unencodable_payloads_are_refused_with_nothing_written() -> None:
    """NaN, infinity, foreign objects, non-string keys of other types and cyclic values
    are each refused by enqueue_many as a SerializationError naming the position, and
    nothing is written; the serializer keeps working after each refusal."""
    cycle: list[Any] = []
    cycle.append(cycle)
    storage = jq.MemoryStorage()
    async with jq.open_queue(storage, name="serde") as q:
        for bad in (math.nan, {"x": math.inf}, object(), {(1, 2): "tuple key"}, cycle):
            with pytest.raises(jq.SerializationError, match=r"jobs\[1\]: cannot encode payload"):
                await q.enqueue_many([("good", {"n": 1}), ("bad", bad)])
            assert (await storage.stats("serde")).queued == 0
        assert [r.status for r in await q.enqueue_many([("good", {"n": 1})])] == ["queued"]
