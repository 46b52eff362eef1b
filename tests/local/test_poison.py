"""The drill's poison messages are each rejected by validation, for its own reason."""

import pytest

from dataset.config import load_config
from local.poison import poison_messages
from transforms.validation import RecordError, parse_message


@pytest.mark.parametrize("config_path", ["configs/traffic.yaml", "configs/ad_conversions.yaml"])
def test_each_poison_kind_is_dead_lettered_with_its_reason(config_path):
    config = load_config(config_path)
    reasons = {
        "unparseable-event-time-attribute": "does not parse",
        "nan-event-time": "contains NaN",
        "non-utf8-bytes": "not UTF-8",
    }
    messages = poison_messages(config, 1_700_000_000.0)
    assert [kind for kind, _, _ in messages] == list(reasons)
    for kind, data, attributes in messages:
        with pytest.raises(RecordError, match=reasons[kind]):
            parse_message(data, attributes, config, published=1_700_000_000.0)
