"""The optional ``limits:`` section of a dataset config."""

import pytest
import yaml

from dataset.config import Limits, config_from_dict


def _raw():
    with open("configs/traffic.yaml") as f:
        return yaml.safe_load(f)


def test_limits_default_to_the_windows_allowed_lateness():
    cfg = config_from_dict(_raw())
    assert cfg.limits == Limits()
    assert cfg.max_event_age_seconds == 120  # traffic's windows.allowed_lateness_seconds


def test_limits_are_read():
    raw = _raw()
    raw["limits"] = {
        "max_message_bytes": 2048,
        "max_event_age_seconds": 86400,
        "max_future_seconds": 5,
    }
    cfg = config_from_dict(raw)
    assert cfg.limits == Limits(2048, 86400, 5)
    assert cfg.max_event_age_seconds == 86400


@pytest.mark.parametrize(
    "limits, message",
    [
        ({"max_message_bytes": 0}, "limits.max_message_bytes: must be a positive number"),
        ({"max_message_bytes": "1MB"}, "limits.max_message_bytes: expected an integer"),
        ({"max_event_age_seconds": -1}, "limits.max_event_age_seconds: must be >= 0"),
        ({"max_future_seconds": -5}, "limits.max_future_seconds: must be >= 0"),
        ({"max_age": 5}, "limits.max_age: unknown setting"),
        ([1], "limits: expected a mapping"),
    ],
)
def test_bad_limits_name_the_setting(limits, message):
    raw = _raw()
    raw["limits"] = limits
    with pytest.raises(ValueError, match=message):
        config_from_dict(raw, source="x.yaml")
