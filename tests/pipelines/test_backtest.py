"""pipelines.backtest: the command (python -m pipelines.main backtest), policies, results."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from dataset.config import load_config
from pipelines import backtest, main
from simulator.exports import export_history

END = 1_767_225_600.0


def write_config(path, **retraining):
    with open("configs/traffic.yaml", encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    raw["retraining"].update(
        {"min_new_examples": 120, "min_interval_seconds": 0, "training_window_rows": 200},
        **retraining,
    )
    raw["model"] = {"epochs": 3, "min_steps": 40, "early_stopping_patience": 0}
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_backtest_command_writes_results_and_plot(tmp_path):
    config = write_config(tmp_path / "traffic.yaml")
    data = tmp_path / "history.jsonl"
    export_history(load_config(config), str(data), 360, END, n_sensors=40, drift_after=18.0)
    with open(data, "a", encoding="utf-8") as f:
        f.write('{"sensor_id": "S0001"}\n')  # invalid: a dead letter
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main.run(
            ["backtest", "--config", config, "--data", str(data), "--out", str(out),
             "--min-rows", "50", "--policy", "rare:min_new_examples=1000", "--seed", "1"]
        )  # fmt: skip
    assert exit_info.value.code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["rows"] == 360
    assert results["warmup_rows"] == 36
    assert results["invalid_rows"] == 1
    assert [p["name"] for p in results["policies"]] == ["configured", "rare"]
    for p in results["policies"]:
        for key in ("accuracy", "kappa_temporal", "log_loss", "retrains", "promotions",
                    "rejections", "rows_scored"):  # fmt: skip
            assert key in p, key
        assert p["rows_scored"] == 324
    assert results["policies"][0]["retrains"] >= 2
    assert results["policies"][1]["retrains"] == 0
    assert set(results["baselines"]) == {"static", "no_change", "majority"}
    # A policy that never retrains is the static model.
    assert results["policies"][1]["accuracy"] == results["baselines"]["static"]["accuracy"]
    assert os.path.getsize(out / "quality.png") > 1000


def test_policy_specs_are_validated_like_the_config(tmp_path):
    raw = yaml.safe_load(open(write_config(tmp_path / "c.yaml"), encoding="utf-8"))
    name, policy = backtest.policy_from_spec(raw, "x:min_new_examples=50,quality_floor=none", "c")
    assert name == "x" and policy.min_new_examples == 50 and policy.quality_floor is None
    with pytest.raises(ValueError, match="min_new_examples"):
        backtest.policy_from_spec(raw, "x:min_new_examples=0", "c")
    with pytest.raises(ValueError, match="unknown setting"):
        backtest.policy_from_spec(raw, "x:min_new=5", "c")
    with pytest.raises(ValueError, match="NAME:KEY=VALUE"):
        backtest.policy_from_spec(raw, "x", "c")


def test_grid_is_min_new_examples_by_window(tmp_path):
    path = write_config(tmp_path / "c.yaml")
    raw = yaml.safe_load(open(path, encoding="utf-8"))
    names = [n for n, _ in backtest.grid_policies(raw, load_config(path))]
    assert len(names) == 8
    assert "grid_m60_w100" in names and "grid_m240_w400" in names
    assert "grid_m120_w200" not in names  # that is `configured`


def test_bad_input_exits_2(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml")
    code = backtest.main(
        ["--config", config, "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_regression_reports_mae_and_rmse(tmp_path):
    rng = np.random.default_rng(1)
    data = tmp_path / "reg.csv"
    with open(data, "w", encoding="utf-8") as f:
        f.write("k,t,a,b,y\n")
        for i in range(400):
            a, b = rng.normal(size=2)
            f.write(f"k{i % 5},{1_700_000_000 + i},{a:.4f},{b:.4f},{2 * a - b:.4f}\n")
    config = tmp_path / "reg.yaml"
    config.write_text(
        "name: reg\nkey_field: k\nevent_time: {field: t, format: epoch_seconds}\n"
        "features: {a: {type: float}, b: {type: float}}\n"
        "label: {field: y, type: float, task: regression}\n"
        "windows: {specs: [{name: w, kind: fixed, size_seconds: 60}]}\n"
        "retraining: {min_new_examples: 150, training_window_rows: 200, min_interval_seconds: 0}\n"
        "model: {epochs: 3, min_steps: 40, early_stopping_patience: 0}\n"
    )
    out = tmp_path / "out"
    code = backtest.main(
        ["--config", str(config), "--data", str(data), "--out", str(out), "--min-rows", "50",
         "--training-delay", "1", "--no-plot"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    configured = results["policies"][0]
    assert "accuracy" not in configured
    assert configured["mae"] > 0 and configured["rmse"] >= configured["mae"]
    assert configured["retrains"] == 2
    assert set(results["baselines"]["no_change"]) >= {"mae", "rmse", "kappa_temporal"}
    assert not (out / "quality.png").exists()
