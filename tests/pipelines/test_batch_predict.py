"""Batch predictions: pure helpers, the graph on TestPipeline, the command on the emulator."""

from __future__ import annotations

import datetime as dt
import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from dataset.times import utc_iso
from model.features import encode_batch
from pipelines import batch_predict as bp
from tests.helpers import ADS, T0, TRAFFIC, traffic_payload


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """``(root, v1, v2, keras v1, keras v2)``: v1 current, v2 published."""
    from model.keras_model import build_model
    from model.registry import ModelRegistry

    reg = ModelRegistry(str(tmp_path_factory.mktemp("batch") / "registry"))
    m1, m2 = build_model(TRAFFIC, seed=1), build_model(TRAFFIC, seed=2)
    v1 = reg.publish(m1, {"note": "v1"}, status="passed", config=TRAFFIC)
    v2 = reg.publish(m2, {"note": "v2"}, status="passed", config=TRAFFIC)
    reg.promote(v1)
    return reg.root, v1, v2, m1, m2


def _instances(n: int) -> list[dict]:
    rng = np.random.default_rng(3)
    return [
        traffic_payload(
            f"S{i:04d}",
            T0 + 60 * i,
            vehicle_count=int(rng.integers(0, 400)),
            occupancy=float(rng.uniform(0, 1)),
            road_type=["highway", "arterial", "local"][i % 3],
        )
        for i in range(n)
    ]


# ------------------------------------------------------------------ pure logic


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("p1.d1.t1", ("p1", "d1", "t1")),
        ("p-1:d1.t1", ("p-1", "d1", "t1")),
        ("d1.t1", ("dp", "d1", "t1")),
        ("t1", ("dp", "dd", "t1")),
    ],
)
def test_table_ref(value, expected):
    assert bp.table_ref(value, "dp", "dd") == expected


def test_table_ref_needs_a_dataset():
    with pytest.raises(ValueError, match="--bq_dataset"):
        bp.table_ref("t1", "p", None)
    with pytest.raises(ValueError, match="not a BigQuery table"):
        bp.table_ref("a b", "p", "d")


def test_input_kind():
    assert bp.input_kind("data/x.jsonl") == "jsonl"
    assert bp.input_kind("gs://b/x.CSV") == "csv"
    assert bp.input_kind("p.d.t") == "bigquery"
    with pytest.raises(ValueError, match="must end in"):
        bp.input_kind("data/x.parquet")


def test_to_payload_keeps_event_columns_and_formats_timestamps():
    row = {
        "example_id": "e1",
        "sensor_id": "S1",
        "event_time": dt.datetime(2023, 11, 14, 22, 14, tzinfo=dt.UTC),
        "vehicle_count": 3,
        "ingested_at": "ignored",
        "congested": 1,
    }
    assert bp.to_payload(row, TRAFFIC) == {
        "sensor_id": "S1",
        "event_time": "2023-11-14T22:14:00.000Z",
        "vehicle_count": 3,
    }
    ads = {"ad_id": "a", "impression_id": "i", "ts_millis": dt.datetime(2023, 1, 1, tzinfo=dt.UTC)}
    assert bp.to_payload(ads, ADS)["ts_millis"] == 1672531200000


def test_instance_id_prefers_the_rows_own_ids():
    payload = {"sensor_id": "S1"}
    assert bp.instance_id({"example_id": "e1", "message_id": "m"}, payload, TRAFFIC) == "e1"
    assert bp.instance_id({"message_id": "m"}, payload, TRAFFIC) == "m"
    assert bp.instance_id({"impression_id": "i9"}, payload, ADS) == "i9"
    hashed = bp.instance_id({}, payload, TRAFFIC)
    assert hashed.startswith("sha1-") and hashed == bp.instance_id({}, dict(payload), TRAFFIC)
    assert hashed != bp.instance_id({}, {"sensor_id": "S2"}, TRAFFIC)


def test_csv_rows_are_typed_by_the_config():
    header = ["sensor_id", "event_time", "vehicle_count", "occupancy", "road_type", "note"]
    row = bp.csv_row('S1,2023-11-14T22:14:00Z,12,0.5,"local",x', header, TRAFFIC)
    assert row == {
        "sensor_id": "S1",
        "event_time": "2023-11-14T22:14:00Z",
        "vehicle_count": 12,
        "occupancy": 0.5,
        "road_type": "local",
        "note": "x",
    }
    assert bp.csv_row("S1,,twelve,,local,", header, TRAFFIC)["vehicle_count"] == "twelve"
    with pytest.raises(bp.RecordError, match="cells"):
        bp.csv_row("S1,2", header, TRAFFIC)


def test_a_rows_label_is_read_only_for_label_history_of_inline_configs():
    import copy

    import yaml

    from dataset.config import config_from_dict

    with open("configs/traffic.yaml", encoding="utf-8") as f:
        raw = copy.deepcopy(yaml.safe_load(f))
    raw["history_features"] = {"rate_3": {"agg": "label_mean", "last": 3}}
    with_labels = config_from_dict(raw, source="test")
    raw["history_features"] = {"occ_3": {"of": "occupancy", "agg": "mean", "last": 3}}
    without = config_from_dict(raw, source="test")
    assert bp.reads_labels(with_labels) and not bp.reads_labels(without)
    assert not bp.reads_labels(ADS)
    assert bp.inline_label({"congested": 1}, with_labels) == 1
    assert bp.inline_label({"congested": "1"}, with_labels) == 1  # a CSV cell
    assert bp.inline_label({"congested": ""}, with_labels) is None
    assert bp.inline_label({}, with_labels) is None
    assert bp.inline_label({"congested": 7}, without) is None  # not read: not checked
    with pytest.raises(bp.RecordError, match="expected 0 or 1"):
        bp.inline_label({"congested": 7}, with_labels)


# ------------------------------------------------------------ graph and plan


def test_graph_predicts_with_the_pinned_version_and_dead_letters_bad_lines(registry):
    root, v1, v2, _, m2 = registry
    instances = _instances(30)
    lines = [json.dumps(dict(i, message_id=f"m{n}")) for n, i in enumerate(instances)]
    lines += ["{not json", json.dumps(traffic_payload(occupancy=7.0)), "[1]"]
    scores = m2.predict(encode_batch(instances, TRAFFIC), verbose=0).reshape(-1)
    expected = {f"m{n}": float(s) for n, s in enumerate(scores)}

    def check(rows):
        assert {r["example_id"] for r in rows} == set(expected)
        for row in rows:
            assert row["prediction"] == pytest.approx(expected[row["example_id"]], abs=1e-5)
            assert row["model_version"] == v2  # the pinned one, not CURRENT (v1)
            assert row["predicted_label"] == int(row["prediction"] >= 0.5)
            assert row["predicted_at"].endswith("Z")
        by_id = {r["example_id"]: r for r in rows}
        assert by_id["m4"]["sensor_id"] == "S0004"
        assert by_id["m4"]["event_time"] == utc_iso(T0 + 240)

    with TestPipeline() as p:
        out = bp.build_graph(p | beam.Create(lines), TRAFFIC, root, v2, "jsonl")
        assert_that(out["predictions"], check)
        errors = out["dead_letter"] | beam.Map(lambda r: (r["step"], r["errorMessage"][:30]))
        assert_that(
            errors,
            equal_to(
                [
                    ("ValidateInstances", "line is not valid JSON: Expect"),
                    ("ValidateInstances", "feature 'occupancy': 7.0 is ab"),
                    ("ValidateInstances", "expected a JSON object, got li"),
                ]
            ),
            label="DeadLetters",
        )


def _plan(*argv: str) -> bp.Plan:
    args, beam_args = bp.build_parser().parse_known_args(list(argv))
    return bp.Plan(args, PipelineOptions(beam_args))


def test_plan_resolves_the_current_version_and_tables(registry, tmp_path):
    root, v1, v2, _, _ = registry
    plan = _plan(
        "--config",
        "configs/traffic.yaml",
        "--input",
        "d_in.t_in",
        "--output",
        "preds",
        "--registry",
        root,
        "--project",
        "proj-1",
        "--bq_dataset",
        "d_out",
    )
    assert plan.version == v1 and plan.kind == "bigquery"
    assert plan.source == "proj-1:d_in.t_in" and plan.output == "proj-1:d_out.preds"
    assert plan.dead_letter == "proj-1:d_out.dead_letter"
    assert plan.temp_dataset == ("proj-1", "d_out")
    pinned = _plan(
        "--config=configs/traffic.yaml",
        "--input=x.t",
        "--output=o.t",
        f"--registry={root}",
        "--project=proj-1",
        f"--model-version={v2}",
    )
    assert pinned.version == v2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("--model-version=v20000101T000000Z-abcdef", "unknown version"),
        ("--inference_max_batch_size=0", "must be >= 1"),
        ("--output=a b", "not a BigQuery table"),
    ],
)
def test_plan_refuses_what_cannot_run(registry, extra, message):
    root = registry[0]
    args = {
        "--config": "configs/traffic.yaml",
        "--input": "data/x.jsonl",
        "--output": "p1.d.t",
        "--registry": root,
    }
    with pytest.raises(ValueError, match=message):
        _plan(*[f"{k}={v}" for k, v in args.items()], extra)


def test_an_empty_registry_needs_a_version(tmp_path):
    with pytest.raises(ValueError, match="no current version"):
        _plan(
            "--config=configs/traffic.yaml",
            "--input=data/x.jsonl",
            "--output=p1.d.t",
            f"--registry={tmp_path}",
        )


def test_main_reports_bad_options_with_exit_2(capsys, registry):
    assert bp.main(["--config=configs/traffic.yaml"]) == 2
    assert "--input" in capsys.readouterr().err
    args = ["--config=configs/traffic.yaml", "--input=x.parquet/y", "--output=p1.d.t"]
    assert bp.main([*args, f"--registry={registry[0]}"]) == 2
    assert "must end in" in capsys.readouterr().out


# -------------------------------------------------------------- the emulator


def _rows(client, table: str) -> list[dict]:
    return [dict(r.items()) for r in client.query(f"SELECT * FROM `{table}`").result()]


@pytest.mark.emulators
def test_batch_predict_command_against_the_bigquery_emulator(
    registry, bigquery_client, bigquery_emulator_grpc, gcp_project, unique_name, tmp_path
):
    from dataset.resources import ensure_bigquery_tables
    from pipelines.main import run

    root, v1, _, m1, _ = registry
    dataset = unique_name
    ensure_bigquery_tables(gcp_project, dataset, TRAFFIC, client=bigquery_client)
    instances = _instances(12)
    # Input 1: the training-examples table (extra columns are ignored).
    table = f"{gcp_project}.{dataset}.{TRAFFIC.tables.training_examples}"
    rows = [
        dict(
            i,
            example_id=f"ex{n}",
            label_source="inline",
            ingestion_id=f"ing{n}",
            ingested_at=utc_iso(T0),
        )
        for n, i in enumerate(instances)
    ]
    assert bigquery_client.insert_rows_json(table, rows) == []
    scores = m1.predict(encode_batch(instances, TRAFFIC), verbose=0).reshape(-1)
    with pytest.raises(SystemExit) as done:
        run(
            [
                "batch-predict",
                "--config=configs/traffic.yaml",
                f"--input={dataset}.{TRAFFIC.tables.training_examples}",
                "--output=batch_predictions",
                f"--registry={root}",
                f"--project={gcp_project}",
                f"--bq_dataset={dataset}",
            ]
        )
    assert done.value.code == 0
    out = _rows(bigquery_client, f"{gcp_project}.{dataset}.batch_predictions")
    assert sorted(r["example_id"] for r in out) == sorted(f"ex{n}" for n in range(12))
    for row in out:
        n = int(row["example_id"][2:])
        assert row["sensor_id"] == instances[n]["sensor_id"]
        assert row["prediction"] == pytest.approx(float(scores[n]), abs=1e-5)
        assert row["model_version"] == v1 and row["predicted_at"] is not None
    # The dataset itself survived the DIRECT_READ (temp_dataset was passed).
    assert bigquery_client.get_dataset(f"{gcp_project}.{dataset}")

    # Input 2: a JSON Lines file with a bad line: it lands in the dead-letter table.
    path = tmp_path / "instances.jsonl"
    lines = [json.dumps(i) for i in instances[:3]] + [json.dumps(traffic_payload(road_type="x"))]
    path.write_text("\n".join(lines) + "\n")
    code = bp.main(
        [
            "--config=configs/traffic.yaml",
            f"--input={path}",
            f"--output={gcp_project}.{dataset}.file_predictions",
            f"--registry={root}",
            f"--project={gcp_project}",
        ]
    )
    assert code == 0
    out = _rows(bigquery_client, f"{gcp_project}.{dataset}.file_predictions")
    assert sorted(r["sensor_id"] for r in out) == ["S0000", "S0001", "S0002"]
    assert all(r["example_id"].startswith("sha1-") for r in out)
    dead = _rows(bigquery_client, f"{gcp_project}.{dataset}.{TRAFFIC.tables.dead_letter}")
    assert [(d["step"], "road_type" in d["errorMessage"]) for d in dead] == [
        ("ValidateInstances", True)
    ]


def test_csv_input_through_the_graph(registry, tmp_path):
    root, v1, _, m1, _ = registry
    instances = _instances(4)
    header = ["sensor_id", "event_time", "vehicle_count", "mean_speed_kmh", "occupancy"]
    header += ["hour_of_day", "road_type", "congested"]
    path = tmp_path / "instances.csv"
    lines = [",".join(header)] + [",".join(str(i[h]) for h in header) for i in instances]
    lines.append("S9,2023-11-14T22:14:00Z,many,1,0.5,8,local,0")
    path.write_text("\n".join(lines) + "\n")
    assert bp.read_csv_header(str(path)) == header
    scores = m1.predict(encode_batch(instances, TRAFFIC), verbose=0).reshape(-1)
    expected = {i["sensor_id"]: float(s) for i, s in zip(instances, scores, strict=True)}

    def check(rows):
        assert {r["sensor_id"]: r["model_version"] for r in rows} == dict.fromkeys(expected, v1)
        for row in rows:
            assert row["prediction"] == pytest.approx(expected[row["sensor_id"]], abs=1e-5)

    with TestPipeline() as p:
        out = bp.build_graph(p | beam.Create(lines[1:]), TRAFFIC, root, v1, "csv", header)
        assert_that(out["predictions"], check)
        errors = out["dead_letter"] | beam.Map(lambda r: "vehicle_count" in r["errorMessage"])
        assert_that(errors, equal_to([True]), label="DeadLetters")


def test_read_csv_header_refuses_missing_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        bp.read_csv_header(str(tmp_path / "none.csv"))


def test_a_pinned_version_that_cannot_load_fails_the_job(registry, tmp_path):
    import shutil

    from model.registry import KERAS_FILE, ModelRegistry

    root = tmp_path / "registry"
    shutil.copytree(registry[0], root)
    v1 = registry[1]
    (root / "versions" / v1 / KERAS_FILE).write_bytes(b"corrupt")
    handler = bp.PinnedVersionHandler(ModelRegistry(str(root)).root, v1)
    with pytest.raises(RuntimeError, match=f"{v1} could not be loaded"):
        handler.load_model()
