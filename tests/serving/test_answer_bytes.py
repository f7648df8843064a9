"""A single-row answer's bytes are written out, not encoded: they must be what the JSON encoder gives."""

from __future__ import annotations

import json

import pytest
from opsloop.serving import protocol


@pytest.mark.parametrize("request_id", ["abc-1", 'a "quoted" id', "caf\u00e9 \u2028 \\ end", "x" * 200])
@pytest.mark.parametrize(("predictions", "scores"), [
    ([1], [0.123456789012345]), ([0], [1e-300]), ([0], [1.0]), ([1], [2.5e16]), ([0], [float("nan")]),
    ([True], [0.5]), ([0, 1], [0.1, 0.2]), ([3], None)])
def test_an_answer_is_what_json_dumps_gives(predictions, scores, request_id):
    rows = ([{"prediction": p} for p in predictions] if scores is None
            else [{"prediction": p, "score": s} for p, s in zip(predictions, scores)])
    want = json.dumps({"predictions": rows, "model_name": "m\u00fcnchen", "model_version": "12",
                       "request_id": request_id}, separators=(",", ":")).encode()
    got = protocol.instances_response(predictions, scores, model="m\u00fcnchen", version="12", request=request_id)
    assert got == want
