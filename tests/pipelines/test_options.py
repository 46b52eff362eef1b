import json

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.options import StreamingTrainingOptions, table_spec, validated
from tests.dataset.conftest import config_bucket  # noqa: F401 (fixture)

GOOD = [
    "--project=local-project",
    "--dataset_config=configs/traffic.yaml",
    "--input_subscription=projects/local-project/subscriptions/events",
    "--bq_dataset=traffic",
]


def test_flex_template_parameters_are_exactly_the_options():
    """metadata.json mirrors StreamingTrainingOptions: same names, same required set."""
    import argparse

    parser = argparse.ArgumentParser()
    StreamingTrainingOptions._add_argparse_args(parser)
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    with open("templates/metadata.json") as f:
        params = {p["name"]: p for p in json.load(f)["parameters"]}
    assert set(params) == flags
    required = {name for name, p in params.items() if not p.get("isOptional", False)}
    assert required == {"dataset_config", "input_subscription", "bq_dataset"}


def test_flex_template_parameters_are_the_help_options():
    """Every template parameter is an option ``python -m pipelines.main --help`` lists."""
    import re
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pipelines.main", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    listed = set(re.findall(r"^  --(\w+)", done.stdout, re.M))
    with open("templates/metadata.json") as f:
        params = {p["name"] for p in json.load(f)["parameters"]}
    assert params == listed


def test_valid_options_load_the_config():
    opts, config = validated(PipelineOptions(GOOD))
    assert config.name == "traffic"
    assert table_spec(PipelineOptions(GOOD), "aggregates") == "local-project:traffic.aggregates"


@pytest.mark.parametrize(
    "override, message",
    [
        ("--input_subscription=events", "--input_subscription"),
        ("--bq_dataset=bad-name", "--bq_dataset"),
        ("--dataset_config=configs/nope.yaml", "does not exist"),
        ("--retrain_topic=retrain", "--retrain_topic"),
        ("--dedup_window_seconds=0", "--dedup_window_seconds"),
    ],
)
def test_bad_options_fail_early_with_the_flag_named(override, message):
    name = override.split("=")[0]
    args = [a for a in GOOD if not a.startswith(name + "=")] + [override]
    with pytest.raises(ValueError, match=message):
        validated(PipelineOptions(args))


def test_missing_required_flag():
    with pytest.raises(ValueError, match="--bq_dataset is required"):
        validated(PipelineOptions(GOOD[:3]))


def test_broken_config_stops_the_launch_before_anything_starts(tmp_path):
    """Issue 9 drill: a bad field exits non-zero, names the field, contacts nothing."""
    import yaml

    from tests.pipelines.test_dataflow_graph import run_offline

    with open("configs/traffic.yaml") as f:
        raw = yaml.safe_load(f)
    raw["windows"]["specs"][0]["size_seconds"] = "one minute"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(raw))
    args = [a for a in GOOD if not a.startswith("--dataset_config=")]
    args += [f"--dataset_config={broken}", "--retrain_topic=projects/local-project/topics/r"]
    result = run_offline(args)
    assert result.returncode != 0
    assert "windows.specs[0].size_seconds: expected an integer" in result.stderr
    assert "NETWORK ATTEMPT" not in result.stderr
    assert "Starting" not in result.stderr


def test_options_accept_a_gs_config(config_bucket):  # noqa: F811 (the imported fixture)
    from tests.dataset.conftest import upload

    with open("configs/traffic.yaml") as f:
        uri = upload(config_bucket, "traffic.yaml", f.read())
    args = [a for a in GOOD if not a.startswith("--dataset_config=")]
    _, config = validated(PipelineOptions([*args, f"--dataset_config={uri}"]))
    assert (config.name, config.source_path) == ("traffic", uri)
