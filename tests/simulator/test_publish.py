"""Unit tests of the publisher's pure logic and its loops (with an in-memory sink)."""

from __future__ import annotations

import collections
import io
import json
import random
import threading
import time

import pytest

from dataset.config import load_config
from dataset.times import EventTimeError, format_event_time, parse_event_time, parse_time_arg
from simulator import publish
from simulator.exports import export_history
from simulator.messages import (
    MALFORMED_KINDS,
    OutMessage,
    available_malformed_kinds,
    build_message,
    event_time_of,
    malform,
    rebase_record,
)
from simulator.pacing import Progress, PublishStats, due_count, due_time
from simulator.publisher import InjectionOptions, run_replay, run_simulate
from simulator.records import coerce_value, csv_row_to_record, read_records
from simulator.traffic import TrafficSimulator
from tests.simulator import checks
from transforms.validation import RecordError, parse_message

TRAFFIC = load_config("configs/traffic.yaml")
ADS = load_config("configs/ad_conversions.yaml")
T0 = 1_699_999_800.0


def rfc3339(t: float) -> str:
    """The attribute form of an event time (RFC 3339 UTC, milliseconds)."""
    return format_event_time(t, "iso8601")


STATS_KEYS = {
    "events_published",
    "valid_published",
    "malformed_published",
    "malformed_by_kind",
    "malformed_ids",
    "duplicates_published",
    "late_published",
    "messages_sent",
    "first_event_time",
    "last_event_time",
    "running",
}


class ListSink:
    """In-memory stand-in for PubSubSink."""

    def __init__(self):
        self.messages: list[OutMessage] = []
        self.flushed = False

    def publish(self, msg: OutMessage) -> None:
        self.messages.append(msg)

    def poll(self) -> None:
        pass

    def flush(self, timeout: float) -> None:
        self.flushed = True


def _reading(t: float = T0) -> dict:
    return TrafficSimulator().reading(5, t)


# ---------------------------------------------------------------------------- messages


def test_build_message_compact_json_and_attributes():
    rec = _reading()
    msg = build_message(rec, TRAFFIC, T0, "abc123")
    assert msg.data == json.dumps(rec, separators=(",", ":")).encode()
    assert b" " not in msg.data
    assert msg.attributes == {"event_time": "2023-11-14T22:10:00.000Z", "message_id": "abc123"}
    assert checks.problems(msg.data, TRAFFIC) == []


def test_attribute_names_come_from_config():
    imp = {
        "impression_id": "imp-1",
        "ad_id": "ad_001",
        "ts_millis": 1_704_067_200_123,
        "bid_price": 1.5,
        "slot_position": 2,
        "device": "mobile",
        "user_recent_clicks": 3,
    }
    t = event_time_of(imp, ADS)
    msg = build_message(imp, ADS, t, "id-1")
    assert msg.attributes == {"ts": "2024-01-01T00:00:00.123Z", "message_id": "id-1"}


def test_traffic_supports_every_malformed_kind():
    assert available_malformed_kinds(TRAFFIC) == MALFORMED_KINDS
    assert available_malformed_kinds(ADS) == MALFORMED_KINDS


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
@pytest.mark.parametrize("config_name", ["traffic", "ads"])
def test_malformed_kinds_are_invalid(kind, config_name):
    """Every malformed kind is dead-lettered by the pipeline's own validation."""
    config = TRAFFIC if config_name == "traffic" else ADS
    if config_name == "traffic":
        records = [TrafficSimulator().reading(k, T0 + k) for k in range(30)]
    else:
        from simulator.ads import AdSimulator

        records = [AdSimulator().impression(k, 1_704_067_200_000).impression for k in range(30)]
    for i, rec in enumerate(records):
        t = event_time_of(rec, config)
        valid = build_message(rec, config, t, f"ok-{i}")
        parse_message(valid.data, valid.attributes, config, t)  # the original passes
        msg = build_message(rec, config, t, f"bad-{i}", malformed_kind=kind, rng=random.Random(i))
        with pytest.raises(RecordError):
            parse_message(msg.data, msg.attributes, config, t)


def test_malformed_kinds_hit_what_they_say():
    rec = _reading()
    rng = random.Random(1)

    def obj(kind):
        return json.loads(malform(rec, TRAFFIC, kind, rng))

    assert set(rec) - set(obj("missing_feature")) <= set(TRAFFIC.feature_names)
    assert len(set(rec) - set(obj("missing_feature"))) == 1
    assert "sensor_id" not in obj("missing_key")
    extra = set(obj("extra_field")) - set(rec)
    assert len(extra) == 1 and extra.pop().startswith("unexpected_field")
    assert any(isinstance(v, list) for v in obj("list_value").values())
    wrong = obj("wrong_type")
    changed = [f for f in TRAFFIC.feature_names if wrong[f] != rec[f]]
    assert len(changed) == 1 and TRAFFIC.feature(changed[0]).is_numeric
    assert isinstance(wrong[changed[0]], str)
    far = obj("out_of_range")
    spec = TRAFFIC.feature(next(f for f in TRAFFIC.feature_names if far[f] != rec[f]))
    assert far[spec.name] > spec.max or far[spec.name] < spec.min
    assert not isinstance(json.loads(malform(rec, TRAFFIC, "not_object", rng)), dict)
    with pytest.raises(ValueError, match="unknown malformed kind"):
        malform(rec, TRAFFIC, "bogus", rng)


def test_malformed_message_keeps_valid_attributes():
    msg = build_message(
        _reading(), TRAFFIC, T0, "m1", malformed_kind="not_json", rng=random.Random(0)
    )
    assert msg.malformed_kind == "not_json"
    assert msg.attributes["event_time"] == rfc3339(T0)
    assert msg.attributes["message_id"] == "m1"


# ---------------------------------------------------------------------------- time


@pytest.mark.parametrize(
    "fmt, value",
    [
        ("iso8601", "2023-11-14T22:10:00.250Z"),
        ("epoch_millis", 1699999800250),
        ("epoch_seconds", 1699999800.25),
    ],
)
def test_event_time_format_round_trip(fmt, value):
    t = T0 + 0.25
    assert format_event_time(t, fmt) == value
    assert parse_event_time(value, fmt) == pytest.approx(t)


def test_parse_event_time_rejects_garbage():
    for value, fmt in [
        (None, "iso8601"),
        ("yesterday", "iso8601"),
        (True, "epoch_millis"),
        ("x", "epoch_seconds"),
        (12, "iso8601"),
    ]:
        with pytest.raises(ValueError):
            parse_event_time(value, fmt)
    with pytest.raises(ValueError, match="missing event-time field"):
        event_time_of({"sensor_id": "S1"}, TRAFFIC)


def test_parse_time_arg():
    assert parse_time_arg("2023-11-14T22:10:00Z") == T0
    assert parse_time_arg("2023-11-14T23:10:00+01:00") == T0
    assert parse_time_arg(str(T0)) == T0
    # The pipeline's rule: a time without a zone is ambiguous.
    with pytest.raises(EventTimeError, match="without a timezone"):
        parse_time_arg("2023-11-14T22:10:00")
    with pytest.raises(EventTimeError, match="ISO-8601"):
        parse_time_arg("noon")


def test_rebase_record_rewrites_event_time_in_config_format():
    rec = _reading()
    out = rebase_record(rec, TRAFFIC, T0 + 100.5)
    assert out["event_time"] == "2023-11-14T22:11:40.500Z"
    assert rec["event_time"] == "2023-11-14T22:10:00.000Z"  # the input is not modified
    assert {k: v for k, v in out.items() if k != "event_time"} == {
        k: v for k, v in rec.items() if k != "event_time"
    }
    conv = {"impression_id": "i", "converted": 1, "ts_millis": 5}
    assert rebase_record(conv, ADS, T0)["ts_millis"] == int(T0 * 1000)


# ---------------------------------------------------------------------------- CSV typing


def test_coerce_value():
    assert coerce_value("12", "int") == 12 and type(coerce_value("12", "int")) is int
    assert coerce_value("12.0", "int") == 12
    assert coerce_value("12.5", "int") == "12.5"  # left for validation to reject
    assert coerce_value(" 0.25 ", "float") == 0.25
    assert coerce_value("3", "float") == 3.0 and type(coerce_value("3", "float")) is float
    assert coerce_value("nan", "float") == "nan"
    assert coerce_value("fast", "float") == "fast"
    assert coerce_value("TRUE", "bool") is True and coerce_value("0", "bool") is False
    assert coerce_value("maybe", "bool") == "maybe"
    assert coerce_value("007", "string") == "007"


def test_csv_row_to_record_types_by_config_and_drops_empty_cells():
    row = {
        "sensor_id": "0042",
        "event_time": "2023-11-14T22:10:00.000Z",
        "vehicle_count": "17",
        "mean_speed_kmh": "48.5",
        "occupancy": "",
        "hour_of_day": "8",
        "road_type": "local",
        "congested": "1",
        "note": "kept as text",
    }
    assert csv_row_to_record(row, TRAFFIC) == {
        "sensor_id": "0042",
        "event_time": "2023-11-14T22:10:00.000Z",
        "vehicle_count": 17,
        "mean_speed_kmh": 48.5,
        "hour_of_day": 8.0,
        "road_type": "local",
        "congested": 1,
        "note": "kept as text",
    }
    ads = csv_row_to_record(
        {"impression_id": "9", "converted": "1", "ts_millis": "1704067200000", "ad_id": ""}, ADS
    )
    assert ads == {"impression_id": "9", "converted": 1, "ts_millis": 1704067200000}


def test_csv_export_round_trips_through_read_records(tmp_path):
    jsonl, csvf = tmp_path / "h.jsonl", tmp_path / "h.csv"
    assert export_history(TRAFFIC, str(jsonl), 200, T0, rate=10) == 200
    assert export_history(TRAFFIC, str(csvf), 200, T0, rate=10) == 200
    from_json = [r for _, r, _ in read_records(str(jsonl), TRAFFIC)]
    from_csv = [r for _, r, _ in read_records(str(csvf), TRAFFIC)]
    assert from_csv == from_json
    assert from_json == TrafficSimulator().history(200, T0, rate=10)
    header = csvf.read_text().splitlines()[0].split(",")
    assert header == ["sensor_id", "event_time", *TRAFFIC.feature_names, "congested"]


def test_read_records_reports_bad_rows_and_rejects_unknown_types(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n\nnot json\n[1, 2]\n{"b": 2}\n')
    rows = list(read_records(str(f), TRAFFIC))
    assert rows == [
        (1, {"a": 1}, ""),
        (3, None, "invalid_json"),
        (4, None, "not_an_object"),
        (5, {"b": 2}, ""),
    ]
    with pytest.raises(ValueError, match="unknown file type"):
        read_records(str(tmp_path / "x.parquet"), TRAFFIC)
    with pytest.raises(ValueError, match="does not exist"):
        read_records(str(tmp_path / "missing.csv"), TRAFFIC)


# ---------------------------------------------------------------------------- pacing, stats


def test_pacing_math():
    assert due_time(100.0, 0, 10) == 100.0
    assert due_time(100.0, 25, 10) == 102.5
    assert due_count(100.0, 99.0, 10) == 0
    assert due_count(100.0, 100.0, 10) == 1
    assert due_count(100.0, 100.95, 10) == 10
    assert due_count(100.0, 101.0, 10) == 11


def test_stats_counts_and_document():
    s = PublishStats(mode="simulate", topic="t", started_at=T0)
    ok = OutMessage(b"{}", {}, T0 + 5, "a")
    bad = OutMessage(b"x", {}, T0 + 1, "b", malformed_kind="not_json", late=True)
    s.record(ok)
    s.record(bad)
    s.record(ok, duplicate=True)
    d = s.to_dict(running=False, now=T0 + 10)
    assert STATS_KEYS <= set(d)
    assert d["events_published"] == 2 and d["valid_published"] == 1
    assert d["malformed_published"] == 1 and d["malformed_by_kind"] == {"not_json": 1}
    assert d["malformed_ids"] == ["b"]
    assert d["duplicates_published"] == 1 and d["messages_sent"] == 3
    assert d["late_published"] == 1
    assert d["first_event_time"] == rfc3339(T0 + 1) and d["last_event_time"] == rfc3339(T0 + 5)
    assert d["running"] is False
    json.dumps(d)


def test_progress_line_mode_and_tty_mode():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    now = [0.0]
    stats = PublishStats(started_at=0.0)
    stats.record(OutMessage(b"{}", {}, 1.0, "a"))
    plain = io.StringIO()
    p = Progress(total=10, stream=plain, clock=lambda: now[0])
    now[0] = 1.0
    p.update(stats)  # too early for a line
    now[0] = 6.0
    p.update(stats)
    p.finish(stats)
    lines = plain.getvalue().splitlines()
    assert len(lines) == 2 and "published 1" in lines[0] and "malformed 0" in lines[0]
    assert "\r" not in plain.getvalue()
    tty = Tty()
    p = Progress(total=10, stream=tty, clock=lambda: now[0])
    now[0] = 7.0
    p.update(stats)
    assert tty.getvalue().startswith("\r[") and "10%" in tty.getvalue()


# ---------------------------------------------------------------------------- loops


def test_run_simulate_injects_and_accounts(tmp_path):
    sink = ListSink()
    stats_file = tmp_path / "stats.json"
    inj = InjectionOptions(
        malformed_fraction=0.15, late_fraction=0.1, late_seconds=60, duplicate_fraction=0.1
    )
    t_before = time.time()
    stats = run_simulate(
        TRAFFIC,
        "projects/p/topics/t",
        rate=500,
        duration=0.5,
        injection=inj,
        stats_file=str(stats_file),
        sink=sink,
        progress_stream=io.StringIO(),
    )
    assert sink.flushed
    doc = json.loads(stats_file.read_text())
    assert STATS_KEYS <= set(doc) and doc["running"] is False
    assert 240 <= doc["events_published"] <= 251
    assert doc["messages_sent"] == len(sink.messages)
    assert doc["messages_sent"] == doc["events_published"] + doc["duplicates_published"]
    assert doc["valid_published"] + doc["malformed_published"] == doc["events_published"]
    assert doc["duplicates_published"] > 5 and doc["late_published"] > 5
    assert doc["malformed_published"] > 10
    assert sum(doc["malformed_by_kind"].values()) == doc["malformed_published"]

    by_id = collections.defaultdict(list)
    for m in sink.messages:
        by_id[m.message_id].append(m)
    assert len(by_id) == doc["events_published"]
    assert sum(len(v) - 1 for v in by_id.values()) == doc["duplicates_published"]
    assert all(len({(m.data, tuple(m.attributes.items())) for m in v}) == 1 for v in by_id.values())
    invalid = {i for i, v in by_id.items() if checks.problems(v[0].data, TRAFFIC, v[0].attributes)}
    assert invalid == set(doc["malformed_ids"]) == set(stats.malformed_ids)
    for m in sink.messages:
        assert set(m.attributes) == {"event_time", "message_id"}
        assert m.attributes["event_time"] == rfc3339(m.event_time)
        if m.malformed_kind is None:
            assert json.loads(m.data)["event_time"] == m.attributes["event_time"]
        # Live event times are "now" (late ones late_seconds before it).
        offset = 60 if m.late else 0
        assert t_before - 1 - offset <= m.event_time <= time.time() - offset + 0.01


def test_run_simulate_stops_on_stop_event():
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    t = time.monotonic()
    stats = run_simulate(
        TRAFFIC,
        "projects/p/topics/t",
        rate=100,
        duration=None,
        injection=InjectionOptions(malformed_fraction=0.0),
        sink=ListSink(),
        stop=stop,
        progress_stream=io.StringIO(),
    )
    assert time.monotonic() - t < 2.0
    assert 10 <= stats.events_published <= 60
    assert stats.malformed_published == 0


def test_run_simulate_rejects_bad_input():
    for kwargs, match in [
        ({"rate": 0, "duration": 1}, "--rate"),
        ({"rate": 1, "duration": -1}, "--duration"),
    ]:
        with pytest.raises(ValueError, match=match):
            run_simulate(TRAFFIC, "projects/p/topics/t", sink=ListSink(), **kwargs)
    with pytest.raises(ValueError, match="--late-fraction"):
        run_simulate(
            TRAFFIC,
            "projects/p/topics/t",
            1,
            1,
            sink=ListSink(),
            injection=InjectionOptions(late_fraction=2),
        )
    with pytest.raises(ValueError, match="does not describe"):
        run_simulate(ADS, "projects/p/topics/t", 1, 1, sink=ListSink())


def test_run_replay_rebases_time_and_skips_rows_without_event_time(tmp_path):
    f = tmp_path / "in.jsonl"
    rows = TrafficSimulator().history(50, T0, rate=10)
    lines = [json.dumps(r) for r in rows]
    broken = dict(rows[0])
    del broken["event_time"]
    lines.insert(10, json.dumps(broken))
    lines.insert(20, json.dumps({**rows[1], "event_time": "someday"}))
    lines.insert(30, "{oops")
    f.write_text("\n".join(lines) + "\n")
    sink = ListSink()
    stats_file = tmp_path / "s.json"
    t_before = time.time()
    stats = run_replay(
        str(f),
        TRAFFIC,
        "projects/p/topics/t",
        rate=2000,
        rebase_time=True,
        stats_file=str(stats_file),
        sink=sink,
        progress_stream=io.StringIO(),
    )
    assert stats.events_published == 50 == len(sink.messages)
    assert stats.skipped_by_reason == {
        "bad_event_time": 1,
        "invalid_json": 1,
        "missing_event_time": 1,
    }
    doc = json.loads(stats_file.read_text())
    assert doc["skipped_rows"] == 3 and doc["running"] is False
    times = [m.event_time for m in sink.messages]
    assert times == sorted(times)
    assert t_before <= times[0] and times[-1] <= time.time()
    for m, original in zip(sink.messages, rows, strict=True):
        payload = json.loads(m.data)
        assert payload["event_time"] == m.attributes["event_time"]
        assert {k: v for k, v in payload.items() if k != "event_time"} == {
            k: v for k, v in original.items() if k != "event_time"
        }


def test_run_replay_keeps_original_times_and_paces(tmp_path):
    f = tmp_path / "ads.jsonl"
    f.write_text(open("data/ad_conversions_sample.jsonl").read())
    sink = ListSink()
    t = time.monotonic()
    stats = run_replay(
        str(f), ADS, "projects/p/topics/t", rate=1000, sink=sink, progress_stream=io.StringIO()
    )
    elapsed = time.monotonic() - t
    assert stats.events_published == 350 and stats.skipped_rows == 0
    assert 0.3 <= elapsed < 3.0  # 350 messages at 1000/s
    first = json.loads(sink.messages[0].data)
    assert sink.messages[0].attributes["ts"] == rfc3339(first["ts_millis"] / 1000)
    assert sink.messages[0].data == json.dumps(first, separators=(",", ":")).encode()
    # Original times, no rebasing: the pipeline's validation accepts every message.
    assert [m for m in sink.messages if checks.problems(m.data, ADS, m.attributes)] == []


def _zoneless_file(tmp_path, n: int = 20):
    rows = TrafficSimulator().history(n, T0, rate=10)
    f = tmp_path / "local-times.jsonl"
    f.write_text("".join(json.dumps(dict(r, event_time=r["event_time"][:-1])) + "\n" for r in rows))
    return f, rows


def test_replay_skips_times_without_a_zone_by_default(tmp_path, caplog):
    """The pipeline dead-letters such times; the replay says so per row instead of sending them."""
    f, _ = _zoneless_file(tmp_path)
    sink = ListSink()
    stats = run_replay(
        str(f), TRAFFIC, "projects/p/topics/t", rate=5000, sink=sink, progress_stream=io.StringIO()
    )
    assert sink.messages == [] and stats.events_published == 0
    assert stats.skipped_by_reason == {"time_without_zone": 20}
    assert "has no zone" in caplog.text and "--assume-utc" in caplog.text
    # The pipeline would indeed have refused them.
    record = json.loads(f.read_text().splitlines()[0])
    with pytest.raises(RecordError, match="without a timezone"):
        parse_message(
            json.dumps(record).encode(),
            {"message_id": "x", "event_time": record["event_time"]},
            TRAFFIC,
        )


@pytest.mark.parametrize("flag", ["assume_utc", "rebase_time"])
def test_replay_times_without_a_zone_when_told(tmp_path, flag):
    f, rows = _zoneless_file(tmp_path)
    sink = ListSink()
    stats = run_replay(
        str(f),
        TRAFFIC,
        "projects/p/topics/t",
        rate=5000,
        sink=sink,
        progress_stream=io.StringIO(),
        **{flag: True},
    )
    assert stats.events_published == 20 and stats.skipped_rows == 0
    for m, original in zip(sink.messages, rows, strict=True):
        assert checks.problems(m.data, TRAFFIC, m.attributes) == []  # the pipeline accepts it
        if flag == "assume_utc":  # taken as UTC: the original instant, now with its zone
            assert json.loads(m.data)["event_time"] == original["event_time"]
            assert m.attributes["event_time"] == original["event_time"]
    args = publish.build_parser().parse_args(
        ["replay", str(f), "--config", "c", "--topic", "t", "--assume-utc"]
    )
    assert args.assume_utc is True


def test_cli_bad_input_exit_codes(tmp_path, capsys):
    rc = publish.main(
        [
            "replay",
            str(tmp_path / "x.txt"),
            "--config",
            "configs/traffic.yaml",
            "--topic",
            "projects/p/topics/t",
        ]
    )
    assert rc == 2
    rc = publish.main(
        [
            "simulate",
            "--config",
            "configs/traffic.yaml",
            "--topic",
            "not-a-topic",
            "--duration",
            "1",
        ]
    )
    assert rc == 2
    with pytest.raises(SystemExit):
        publish.main(
            [
                "simulate",
                "--config",
                "configs/traffic.yaml",
                "--topic",
                "t",
                "--malformed-fraction",
                "1.5",
            ]
        )


def test_cli_exports(tmp_path):
    out = tmp_path / "h.jsonl"
    rc = publish.main(
        [
            "export-history",
            "--config",
            "configs/traffic.yaml",
            "--out",
            str(out),
            "--events",
            "120",
            "--end-time",
            "2023-11-14T22:10:00Z",
            "--rate",
            "5",
            "--sensors",
            "20",
            "--seed",
            "3",
            "--drift-after",
            "10",
            "--day-origin",
            str(T0 - 125),
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    sim = TrafficSimulator(
        n_sensors=20, seed=3, drift_after_seconds=10, start_time=T0 - 24, day_origin=T0 - 125
    )
    assert rows == sim.history(120, T0, rate=5)
    assert 4.0 < rows[-1]["hour_of_day"] < 5.0  # just before 05:00 of the shifted day
    ads = tmp_path / "ads.jsonl"
    assert publish.main(["export-ads", "--out", str(ads), "--impressions", "20"]) == 0
    assert len(ads.read_text().splitlines()) >= 20


def test_unreachable_pubsub_fails_fast_and_clearly(monkeypatch, caplog):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    t = time.monotonic()
    rc = publish.main(
        [
            "simulate",
            "--config",
            "configs/traffic.yaml",
            "--topic",
            "projects/local-project/topics/nothing-here",
            "--duration",
            "1",
        ]
    )
    assert rc == 1
    assert time.monotonic() - t < 15
    assert "cannot reach the Pub/Sub emulator at 127.0.0.1:1" in caplog.text
