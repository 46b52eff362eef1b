"""``--ids-file``: every published message id, once, for reconciliation."""

import io

from simulator.publish import build_parser
from simulator.publisher import InjectionOptions, run_simulate
from tests.helpers import TRAFFIC
from tests.simulator.test_publish import ListSink


def test_ids_file_lists_each_published_id_once(tmp_path):
    ids_file = tmp_path / "ids.txt"
    sink = ListSink()
    stats = run_simulate(
        TRAFFIC,
        "projects/p/topics/t",
        rate=200,
        duration=0.5,
        injection=InjectionOptions(malformed_fraction=0.1, duplicate_fraction=0.2),
        ids_file=str(ids_file),
        sink=sink,
        progress_stream=io.StringIO(),
    )
    ids = ids_file.read_text().split()
    assert stats.duplicates_published > 0
    assert len(ids) == stats.events_published == len(set(ids))
    assert set(ids) == {m.message_id for m in sink.messages}


def test_ids_file_option_is_parsed():
    args = build_parser().parse_args(
        ["simulate", "--config", "c", "--topic", "t", "--ids-file", "ids.txt"]
    )
    assert args.ids_file == "ids.txt"
