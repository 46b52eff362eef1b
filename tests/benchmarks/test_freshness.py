"""benchmarks.freshness: the pure parts (the breakdown of one retrain's timeline)."""

from __future__ import annotations

import pytest

from benchmarks.freshness import SEGMENTS, TRAINER_PHASES, RecordingSink, breakdown


def _phases(received: float, origin: float) -> list[dict]:
    out = [{"name": "launch", "start": received, "end": origin, "seconds": origin - received}]
    t = origin
    for name in TRAINER_PHASES:
        out.append({"name": name, "start": t + 0.01, "end": t + 1.01, "seconds": 1.0})
        t += 1.01
    return out


def test_the_segments_are_consecutive_and_sum_to_the_freshness():
    phases = _phases(received=104.0, origin=104.5)
    parts = breakdown(100.0, 101.0, 103.0, phases, first_prediction=130.0)
    assert list(parts) == list(SEGMENTS)
    assert parts["ingest"] == 1.0 and parts["count_and_trigger"] == 2.0
    assert parts["trigger_delivery"] == 1.0 and parts["launch"] == 0.5
    assert all(parts[n] == 1.0 for n in TRAINER_PHASES)
    assert parts["trainer_other"] == pytest.approx(0.11)  # the gaps between the phases
    assert parts["pickup"] == pytest.approx(130.0 - phases[-1]["end"], abs=1e-3)
    assert sum(parts.values()) == pytest.approx(30.0, abs=1e-2)


def test_without_a_launch_phase_the_trainer_start_closes_the_delivery():
    phases = _phases(received=0.0, origin=104.0)[1:]  # a run the launcher did not time
    parts = breakdown(100.0, None, 103.0, phases, first_prediction=130.0)
    assert parts["ingest"] == 0.0 and parts["count_and_trigger"] == 3.0
    assert parts["launch"] == 0.0 and parts["trigger_delivery"] == pytest.approx(1.01)
    assert sum(parts.values()) == pytest.approx(30.0, abs=1e-2)


def test_the_recording_sink_numbers_messages_from_one():
    class Msg:
        def __init__(self, i):
            self.message_id = f"m{i}"

    class Inner:
        def __init__(self):
            self.got = []

        def publish(self, msg):
            self.got.append(msg)

    sink = RecordingSink(Inner())
    for i in range(3):
        sink.publish(Msg(i))
    assert sink.nth(1)[0] == "m0" and sink.nth(3)[0] == "m2"
    assert sink.nth(0) is None and sink.nth(4) is None
    assert sink.nth(1)[1] <= sink.nth(3)[1]
