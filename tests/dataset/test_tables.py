"""Table schemas and layouts: every table partitioned on one of its own TIMESTAMP columns."""

from __future__ import annotations

import pytest

from dataset.config import load_config
from dataset.tables import table_layouts, table_schemas

CONFIGS = [load_config("configs/traffic.yaml"), load_config("configs/ad_conversions.yaml")]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_every_table_has_a_layout_on_its_own_columns(config):
    schemas, layouts = table_schemas(config), table_layouts(config)
    assert set(layouts) == set(schemas)
    for name, layout in layouts.items():
        columns = {f["name"]: f for f in schemas[name]}
        partition = columns[layout.partition_field]
        assert (partition["type"], partition["mode"]) == ("TIMESTAMP", "REQUIRED"), name
        assert layout.partition_type == "DAY"
        assert set(layout.cluster_fields) <= set(columns), name


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_tables_with_the_key_column_are_clustered_by_it(config):
    schemas, layouts = table_schemas(config), table_layouts(config)
    for name, layout in layouts.items():
        has_key = any(f["name"] == config.key_field for f in schemas[name])
        assert layout.cluster_fields == ((config.key_field,) if has_key else ()), name


def test_history_features_are_nullable_float_columns_of_the_training_table():
    import copy

    import yaml

    from dataset.config import config_from_dict
    from dataset.tables import training_schema

    with open("configs/traffic.yaml", encoding="utf-8") as f:
        raw = copy.deepcopy(yaml.safe_load(f))
    raw["history_features"] = {"occ_mean_5": {"of": "occupancy", "agg": "mean", "last": 5}}
    fields = {f["name"]: f for f in training_schema(config_from_dict(raw))}
    assert fields["occ_mean_5"] == {"name": "occ_mean_5", "type": "FLOAT64", "mode": "NULLABLE"}
    raw.pop("history_features")
    assert "occ_mean_5" not in {f["name"] for f in training_schema(config_from_dict(raw))}
