"""Tests of the ad impression/conversion generator and its committed sample file."""

from __future__ import annotations

import json
import os

import pytest

from dataset.config import load_config
from simulator.ads import DEFAULT_START_MILLIS, AdSimulator
from simulator.exports import export_ads
from tests.simulator import checks

ADS = load_config("configs/ad_conversions.yaml")
SAMPLE = "data/ad_conversions_sample.jsonl"


def test_deterministic_and_seed_dependent():
    assert AdSimulator(seed=3).messages(200) == AdSimulator(seed=3).messages(200)
    assert AdSimulator(seed=3).messages(200) != AdSimulator(seed=4).messages(200)


def test_messages_match_config_and_conversions_follow_impressions():
    sim = AdSimulator()
    imps = list(sim.impressions(4000, rate=2.0))
    assert len({i.impression["impression_id"] for i in imps}) == 4000
    assert len({i.impression["ad_id"] for i in imps}) == 30
    for i in imps:
        assert checks.problems(json.dumps(i.impression).encode(), ADS) == [], i.impression
        assert set(i.impression) == {
            "impression_id",
            "ad_id",
            "ts_millis",
            "bid_price",
            "slot_position",
            "device",
            "user_recent_clicks",
        }
        assert type(i.impression["ts_millis"]) is int
        if i.conversion is not None:
            c = i.conversion
            assert checks.problems(json.dumps(c).encode(), ADS) == [], c
            assert set(c) == {"impression_id", "converted", "ts_millis"}
            assert c["impression_id"] == i.impression["impression_id"]
            assert c["converted"] == 1
            delay = (c["ts_millis"] - i.impression["ts_millis"]) / 1000.0
            assert 5.0 <= delay <= 400.0
            assert delay <= ADS.label.max_delay_seconds
    rate = sum(i.conversion is not None for i in imps) / len(imps)
    assert 0.10 <= rate <= 0.20


def test_conversion_depends_on_features():
    imps = list(AdSimulator().impressions(6000))

    def conv_rate(pred):
        sel = [i for i in imps if pred(i.impression)]
        return sum(i.conversion is not None for i in sel) / len(sel)

    assert conv_rate(lambda m: m["slot_position"] == 1) > 1.5 * conv_rate(
        lambda m: m["slot_position"] >= 4
    )
    assert conv_rate(lambda m: m["user_recent_clicks"] >= 10) > conv_rate(
        lambda m: m["user_recent_clicks"] == 0
    )
    assert conv_rate(lambda m: m["device"] == "desktop") > conv_rate(
        lambda m: m["device"] == "mobile"
    )


def test_messages_sorted_by_time():
    msgs = AdSimulator().messages(500, start_millis=DEFAULT_START_MILLIS, rate=0.5)
    ts = [m["ts_millis"] for m in msgs]
    assert ts == sorted(ts)
    seen = set()
    for m in msgs:
        if "converted" in m:
            assert m["impression_id"] in seen
        else:
            seen.add(m["impression_id"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_ads"):
        AdSimulator(n_ads=0)
    with pytest.raises(ValueError, match="rate"):
        AdSimulator().messages(10, rate=0)


def test_committed_sample_is_reproducible_and_small(tmp_path):
    assert os.path.getsize(SAMPLE) < 150_000
    out = tmp_path / "sample.jsonl"
    export_ads(str(out))  # the defaults made the committed file
    with open(SAMPLE, "rb") as f:
        committed = f.read()
    assert out.read_bytes() == committed
    lines = [json.loads(line) for line in committed.decode().splitlines()]
    impressions = [m for m in lines if "converted" not in m]
    conversions = [m for m in lines if "converted" in m]
    assert len(impressions) == 300
    assert 0.10 * 300 <= len(conversions) <= 0.20 * 300
    assert [m["ts_millis"] for m in lines] == sorted(m["ts_millis"] for m in lines)
    assert all(checks.problems(json.dumps(m).encode(), ADS) == [] for m in lines)
