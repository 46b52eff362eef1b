import copy
import dataclasses
import json

import pytest
import yaml

from dataset.config import config_from_dict, load_config


def _raw(path="configs/traffic.yaml"):
    with open(path) as f:
        return yaml.safe_load(f)


def test_shipped_configs_load():
    traffic = load_config("configs/traffic.yaml")
    assert traffic.key_field == "sensor_id"
    assert traffic.feature("occupancy").max == 1.0
    assert [w.kind for w in traffic.windows] == ["fixed", "sliding"]
    assert traffic.feature("hour_of_day").drift_check is False
    assert traffic.feature("occupancy").drift_check is True  # the default
    ads = load_config("configs/ad_conversions.yaml")
    assert ads.label.source == "separate"
    assert ads.label.join_key == "impression_id"
    assert ads.tables.training_examples == "ad_training_examples"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["features"]["occupancy"].update(min="low"), "features.occupancy.min"),
        (lambda r: r["features"]["road_type"].update(type="text"), "features.road_type.type"),
        (
            lambda r: r["features"]["vehicle_count"].update(min=10, max=1),
            "features.vehicle_count.min",
        ),
        (lambda r: r.pop("key_field"), "key_field: is required"),
        (lambda r: r["label"].update(source="separate"), "label.join_key"),
        (
            lambda r: r["windows"]["specs"][1].pop("period_seconds"),
            "windows.specs[1].period_seconds",
        ),
        (
            lambda r: r["windows"]["specs"][0].update(size_seconds=0),
            "windows.specs[0].size_seconds",
        ),
        (lambda r: r.update(colour="red"), "colour: unknown setting"),
        (lambda r: r["retraining"].update(min_new_examples=-1), "retraining.min_new_examples"),
        (lambda r: r["features"].update(congested={"type": "int"}), "used twice"),
        (lambda r: r["label"].update(task="ranking"), "label.task"),
        (
            lambda r: r["features"]["hour_of_day"].update(drift_check="no"),
            "features.hour_of_day.drift_check: expected true or false",
        ),
    ],
)
def test_bad_config_names_the_field(mutate, message):
    raw = copy.deepcopy(_raw())
    mutate(raw)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(raw, "x.yaml")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)


def test_a_new_dataset_needs_only_a_config(tmp_path):
    raw = {
        "name": "spam",
        "key_field": "sender",
        "event_time": {"field": "ts", "format": "epoch_seconds", "attribute": "ts"},
        "features": {"n_links": {"type": "int", "min": 0}, "lang": {"type": "string"}},
        "label": {"field": "is_spam", "type": "bool", "task": "binary_classification"},
        "windows": {"specs": [{"name": "hourly", "kind": "fixed", "size_seconds": 3600}]},
    }
    path = tmp_path / "spam.json"
    import json

    path.write_text(json.dumps(raw))
    cfg = load_config(path)
    assert cfg.feature_names == ("n_links", "lang")
    assert cfg.retraining.min_new_examples > 0
    assert cfg.tables.dead_letter == "dead_letter"


# ----------------------------------------------------------------- gs:// configs


def test_gs_config_loads_like_the_local_file(config_bucket):
    from tests.dataset.conftest import upload

    with open("configs/traffic.yaml") as f:
        uri = upload(config_bucket, "configs/traffic.yaml", f.read())
    config = load_config(uri)
    assert config.source_path == uri
    assert dataclasses.replace(config, source_path="") == dataclasses.replace(
        load_config("configs/traffic.yaml"), source_path=""
    )


def test_gs_json_config(config_bucket):
    from tests.dataset.conftest import upload

    uri = upload(config_bucket, "ads.json", json.dumps(_raw("configs/ad_conversions.yaml")))
    assert load_config(uri).label.join_key == "impression_id"


def test_bad_gs_config_names_the_field(config_bucket):
    from tests.dataset.conftest import upload

    raw = copy.deepcopy(_raw())
    raw["features"]["occupancy"]["min"] = "low"
    uri = upload(config_bucket, "broken.yaml", yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"gs://config-bucket/broken.yaml: features.occupancy.min"):
        load_config(uri)


@pytest.mark.parametrize(
    "uri, message",
    [
        ("gs://config-bucket/missing.yaml", "does not exist"),
        ("gs://no-such-bucket/traffic.yaml", "does not exist"),
        ("gs://config-bucket", "expected gs://<bucket>/<object>"),
        ("s3://bucket/traffic.yaml", "only local paths, file:// and gs://"),
    ],
)
def test_unreadable_gs_config_is_a_value_error(config_bucket, uri, message):
    with pytest.raises(ValueError, match=message):
        load_config(uri)
