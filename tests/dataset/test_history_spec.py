import copy

import pytest
import yaml

from dataset.config import config_from_dict, load_config
from dataset.history_spec import HistoryFeatureSpec

with open("configs/traffic.yaml", encoding="utf-8") as f:
    TRAFFIC_RAW = yaml.safe_load(f)
with open("configs/ad_conversions.yaml", encoding="utf-8") as f:
    ADS_RAW = yaml.safe_load(f)


def with_history(raw, history):
    out = copy.deepcopy(raw)
    out["history_features"] = history
    return out


def test_history_features_load_in_order():
    cfg = config_from_dict(
        with_history(
            TRAFFIC_RAW,
            {
                "speed_mean_5": {"of": "mean_speed_kmh", "agg": "mean", "last": 5},
                "last_congested": {"agg": "last_label"},
            },
        )
    )
    assert cfg.history_features == (
        HistoryFeatureSpec("speed_mean_5", "mean", "mean_speed_kmh", 5),
        HistoryFeatureSpec("last_congested", "last_label", None, 1),
    )


def test_configs_without_the_section_load_unchanged():
    raw = {k: v for k, v in TRAFFIC_RAW.items() if k != "history_features"}
    assert config_from_dict(raw).history_features == ()
    assert load_config("configs/ad_conversions.yaml").history_features == ()


@pytest.mark.parametrize(
    ("history", "path", "message"),
    [
        (
            {"h": {"of": "occupancy", "agg": "mean", "size": 3}},
            "history_features.h.size",
            "unknown",
        ),
        ({"h": {"of": "occupancy", "agg": "median"}}, "history_features.h.agg", "must be one of"),
        (
            {"h": {"of": "occupancy", "agg": "mean", "last": 0}},
            "history_features.h.last",
            "integer",
        ),
        (
            {"h": {"of": "occupancy", "agg": "mean", "last": "5"}},
            "history_features.h.last",
            "integer",
        ),
        ({"h": {"of": "nope", "agg": "mean"}}, "history_features.h.of", "features"),
        ({"h": {"of": "road_type", "agg": "mean"}}, "history_features.h.of", "string"),
        ({"h": {"of": "occupancy", "agg": "last_label"}}, "history_features.h.of", "label"),
        ({"h": {"agg": "last_label", "last": 3}}, "history_features.h.last", "previous label"),
        (
            {"occupancy": {"of": "occupancy", "agg": "mean"}},
            "history_features.occupancy",
            "already",
        ),
        ({"example_id": {"agg": "last_label"}}, "history_features.example_id", "already"),
        ({"bad-name": {"agg": "last_label"}}, "history_features.bad-name", "letters"),
        ({"h": 3}, "history_features.h", "mapping"),
        (["h"], "history_features", "mapping"),
    ],
)
def test_bad_history_features_name_the_key(history, path, message):
    with pytest.raises(ValueError, match=message) as info:
        config_from_dict(with_history(TRAFFIC_RAW, history), source="cfg.yaml")
    assert f"cfg.yaml: {path}:" in str(info.value)


@pytest.mark.parametrize("agg", ["last_label", "label_mean"])
def test_label_history_needs_inline_labels(agg):
    with pytest.raises(ValueError, match="label.source: inline") as info:
        config_from_dict(with_history(ADS_RAW, {"prev": {"agg": agg}}), source="ads.yaml")
    assert "ads.yaml: history_features.prev.agg:" in str(info.value)
    numeric = next(k for k, v in ADS_RAW["features"].items() if v["type"] in ("int", "float"))
    cfg = config_from_dict(with_history(ADS_RAW, {"prev": {"of": numeric, "agg": "mean"}}))
    assert cfg.history_features[0].of == numeric
