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
