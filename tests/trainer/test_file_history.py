"""trainer.file_history: the first valid rows of a user's file become training rows."""

from __future__ import annotations

import json

import pytest

from dataset.config import load_config
from dataset.tables import training_schema
from simulator.exports import simulated_history
from simulator.records import write_records
from trainer.file_history import split_file, write_rest

TRAFFIC = load_config("configs/traffic.yaml")
ADS = load_config("configs/ad_conversions.yaml")
END_TIME = 1_700_000_850.0
T0 = 1_704_067_200_000  # ms


def _traffic_file(path, n: int) -> list[dict]:
    records = [r for _, r in simulated_history(TRAFFIC, n, END_TIME)]
    write_records(str(path), records)
    return records


def test_inline_labels_cut_after_the_nth_valid_row(tmp_path):
    path = tmp_path / "history.jsonl"
    records = _traffic_file(path, 30)
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(3, '{"sensor_id": "S1", "congested": 0}\n')  # invalid: no time/features
    lines.insert(5, "not json\n")
    path.write_text("".join(lines))

    split = split_file(str(path), TRAFFIC, 10, ingested_at=END_TIME, prefix="b")

    assert split.rows_taken == 10 and split.invalid_rows == 2
    assert len(split.training_rows) == 10
    columns = {c["name"] for c in training_schema(TRAFFIC)}
    assert all(set(r) == columns for r in split.training_rows)
    assert [r["sensor_id"] for r in split.training_rows] == [r["sensor_id"] for r in records[:10]]
    # The replay gets exactly the lines after the 10th valid row (the 12th line).
    assert split.lines_taken == 12
    assert split.rest_lines == lines[12:] and split.rest_rows == 20


def test_separate_labels_are_joined_also_from_after_the_cut(tmp_path):
    rows = [
        {"impression_id": "i1", "ad_id": "a", "ts_millis": T0, "bid_price": 1.0,
         "slot_position": 1, "device": "mobile", "user_recent_clicks": 0},
        {"impression_id": "i2", "ad_id": "b", "ts_millis": T0 + 1000, "bid_price": 2.0,
         "slot_position": 2, "device": "tablet", "user_recent_clicks": 3},
        {"impression_id": "i1", "converted": 1, "ts_millis": T0 + 5000},
        {"impression_id": "i3", "ad_id": "c", "ts_millis": T0 + 6000, "bid_price": 3.0,
         "slot_position": 3, "device": "desktop", "user_recent_clicks": 1},
        {"impression_id": "i3", "converted": 1, "ts_millis": T0 + 7000},
    ]  # fmt: skip
    path = tmp_path / "ads.jsonl"
    write_records(str(path), rows)

    split = split_file(str(path), ADS, 2, ingested_at=T0 / 1000, prefix="b")

    labels = {r["example_id"]: (r["converted"], r["label_source"]) for r in split.training_rows}
    assert labels == {"i1": (1, "message"), "i2": (0, "timeout")}
    assert split.labels_from_rest == 1 and split.negatives_on_timeout == 1
    # i1's label was used for training: it is not replayed; i3 and its label are.
    rest = [json.loads(line) for line in split.rest_lines]
    assert rest == rows[3:]


def test_csv_rest_keeps_its_header(tmp_path):
    path = tmp_path / "history.csv"
    _traffic_file(path, 12)
    lines = path.open(newline="").readlines()  # csv writes \r\n: compare bytes as written

    split = split_file(str(path), TRAFFIC, 5, ingested_at=END_TIME, prefix="b")

    assert len(split.training_rows) == 5
    assert split.rest_lines == [lines[0], *lines[6:]]
    out = tmp_path / "rest.csv"
    write_rest(str(out), split.rest_lines)
    assert out.open(newline="").readlines() == split.rest_lines


def test_too_few_rows_or_nothing_left_are_errors(tmp_path):
    path = tmp_path / "history.jsonl"
    _traffic_file(path, 10)
    with pytest.raises(ValueError, match="only 10 valid rows"):
        split_file(str(path), TRAFFIC, 11, ingested_at=END_TIME, prefix="b")
    with pytest.raises(ValueError, match="no rows are left to replay"):
        split_file(str(path), TRAFFIC, 10, ingested_at=END_TIME, prefix="b")
    with pytest.raises(ValueError, match="at least 1"):
        split_file(str(path), TRAFFIC, 0, ingested_at=END_TIME, prefix="b")
    with pytest.raises(ValueError, match="does not exist"):
        split_file(str(tmp_path / "nope.jsonl"), TRAFFIC, 1, ingested_at=END_TIME, prefix="b")
