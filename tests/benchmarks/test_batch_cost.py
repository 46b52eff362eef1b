"""benchmarks.batch_cost: the in-process source and the sink seam."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor

from benchmarks import batch_cost
from dataset.config import load_config
from pipelines.streaming import build_pipeline
from transforms.validation import parse_message


def test_messages_are_valid_pubsub_messages_stamped_with_their_publish_time():
    config = load_config(batch_cost.CONFIG)
    messages, expected = batch_cost.build_messages(50, 10.0, 1_700_000_000.0)
    assert len(messages) == 50
    ids = set()
    for tv in messages:
        message = tv.value
        assert isinstance(message.data, bytes)
        assert tv.timestamp == pytest.approx(message.publish_time.timestamp())
        record = parse_message(message.data, message.attributes, config, float(tv.timestamp))
        assert 0 < float(tv.timestamp) - record["event_time"] <= 1
        ids.add(message.attributes[config.id_attribute])
    assert len(ids) == 50
    assert expected["WriteTrainingExamples"] == expected["WritePredictions"] == 50


def test_expected_rows_counts_one_aggregate_per_key_and_window():
    config = load_config(batch_cost.CONFIG)  # fixed 1 min; sliding 5 min every 1 min
    t0 = 1_700_000_000 - 1_700_000_000 % 300
    rows = batch_cost.expected_rows([("a", t0 + 1), ("a", t0 + 2), ("b", t0 + 61)], config)
    # a: 1 fixed + 5 sliding windows; b: 1 fixed + 5 sliding (its minute differs).
    assert rows["WriteAggregates"] == 12
    assert rows["WritePredictionQuality"] == 2  # two 60 s evaluation windows
    assert rows["WriteTrainingExamples"] == 3


def _labels(pipeline: beam.Pipeline) -> set[str]:
    labels: set[str] = set()

    class Labels(PipelineVisitor):
        def enter_composite_transform(self, node):
            labels.add(node.full_label)

        def visit_transform(self, node):
            labels.add(node.full_label)

    pipeline.visit(Labels())
    return labels


def test_the_seam_keeps_every_step_name_and_writes_nothing_anywhere(tmp_path):
    args = batch_cost.pipeline_args("BundleBasedDirectRunner", tmp_path / "registry")
    options = PipelineOptions(args)
    production = beam.Pipeline(options=options)
    build_pipeline(production, options)
    messages, _ = batch_cost.build_messages(10, 10.0, 1_700_000_000.0)
    bench = batch_cost.build("graph_inference", "BundleBasedDirectRunner", messages, tmp_path)

    def top(labels):
        return {label for label in labels if label.count("/") <= 1}

    prod, seam = top(_labels(production)), top(_labels(bench))
    assert "WritePredictions/StreamingInsert" in prod
    # Same steps down to the sinks' and the source's insides.
    assert {label.split("/")[0] for label in prod} == {label.split("/")[0] for label in seam}
    assert prod - seam == {
        label
        for label in prod
        if label.startswith(("ReadEvents/ReadFromPubSub/", "Write", "PublishRetrainTriggers/"))
        and label.count("/") == 1
    }
    assert not any("StreamingInsert" in label or "WriteToPubSub" in label for label in seam)


def test_the_whole_graph_runs_in_process_and_every_row_reaches_its_counting_sink():
    messages, expected = batch_cost.build_messages(60, 10.0, 1_700_000_000.0)
    run = batch_cost.run_once("graph", "BundleBasedDirectRunner", messages, None)
    assert run["sink_rows"]["WriteTrainingExamples"] == expected["WriteTrainingExamples"]
    # Too few examples for a retraining trigger: none published, none written.
    assert run["sink_rows"].get("PublishRetrainTriggers", 0) == 0
    assert run["sink_rows"].get("WriteRetrainTriggers", 0) == 0
    assert run["sink_rows"].get("WriteDeadLetters", 0) == 0
    assert run["cpu_s"] > 0 and run["wall_s"] > 0
