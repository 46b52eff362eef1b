"""Tests of trigger parsing (trainer/trigger_messages.py)."""

from __future__ import annotations

import json

import pytest

from tests.trainer.control_helpers import trigger_body as _trigger
from trainer.trigger_messages import MalformedTrigger, Run, parse_trigger


def test_parse_trigger_valid():
    t = parse_trigger(json.dumps(_trigger()).encode(), {"trigger_id": "traffic-000001"}, "traffic")
    assert t.trigger_id == "traffic-000001"
    assert t.reason == "new_data" and t.sequence == 1 and t.new_examples == 3000
    run = Run.from_trigger(t)
    assert run == Run("run-traffic-000001", "traffic-000001", "traffic", "new_data")


@pytest.mark.parametrize(
    "data, attributes, match",
    [
        (b"not json", {}, "not JSON"),
        (b"[1, 2]", {}, "JSON object"),
        (json.dumps(_trigger(trigger_id="")).encode(), {}, "trigger_id"),
        (json.dumps(_trigger(trigger_id="a b")).encode(), {}, "trigger_id"),
        (json.dumps(_trigger()).encode(), {"trigger_id": "other"}, "attribute"),
        (json.dumps(_trigger(dataset="ads")).encode(), {}, "dataset"),
        (json.dumps(_trigger(reason="because")).encode(), {}, "reason"),
        (json.dumps(_trigger(sequence="7")).encode(), {}, "sequence"),
        (json.dumps(_trigger(new_examples=1.5)).encode(), {}, "new_examples"),
        (json.dumps(_trigger(event_time_end="yesterday")).encode(), {}, "event_time_end"),
    ],
)
def test_parse_trigger_malformed(data, attributes, match):
    with pytest.raises(MalformedTrigger, match=match):
        parse_trigger(data, attributes, "traffic")
