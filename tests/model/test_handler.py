"""HotSwapModel and RegistryModelHandler: polling, swaps, load failures, threads."""

import threading
import time

import numpy as np
import pytest
from apache_beam.ml.inference.base import PredictionResult

from model.handler import HotSwapModel
from tests.helpers import T0, TRAFFIC, traffic_payload
from transforms.inference import prediction_row


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_hot_swap_polls_at_most_every_interval_and_swaps_between_batches():
    pointer = {"v": None}
    loads = []
    clock = Clock()

    def load(version):
        loads.append(version)
        return f"model-{version}"

    model = HotSwapModel(lambda: pointer["v"], load, poll_seconds=5, clock=clock)
    assert model.acquire() == (None, None)  # cold start: nothing to serve yet
    pointer["v"] = "v1"
    assert model.acquire() == (None, None)  # not due yet
    clock.now = 5
    assert model.acquire() == ("v1", "model-v1")
    pointer["v"] = "v2"
    clock.now = 7
    assert model.acquire() == ("v1", "model-v1")
    clock.now = 10.5
    assert model.acquire() == ("v2", "model-v2")
    pointer["v"] = "v1"  # rollback reaches the worker the same way
    clock.now = 16
    assert model.acquire() == ("v1", "model-v1")
    assert loads == ["v1", "v2", "v1"]


def test_a_broken_version_keeps_the_serving_one():
    pointer = {"v": "v1"}

    def load(version):
        if version == "bad":
            raise OSError("model.keras missing")
        return version

    model = HotSwapModel(lambda: pointer["v"], load, poll_seconds=0)
    assert model.acquire() == ("v1", "v1")
    pointer["v"] = "bad"
    assert model.acquire() == ("v1", "v1")


def test_prediction_row_keeps_key_and_version():
    result = PredictionResult(np.zeros(3), np.array([0.75], dtype=np.float32), "v7")
    row = prediction_row(TRAFFIC, ("m1", "S0003", T0, 1), result, now=T0 + 2)
    assert row == {
        "example_id": "m1",
        "sensor_id": "S0003",
        "event_time": "2023-11-14T22:14:00.000000Z",
        "prediction": pytest.approx(0.75),
        "predicted_label": 1,
        "model_version": "v7",
        "predicted_at": "2023-11-14T22:14:02.000000Z",
    }
    assert (
        prediction_row(TRAFFIC, ("m1", "S0003", T0, 1), PredictionResult(None, None, None)) is None
    )


def _counter(container, name: str) -> int:
    from apache_beam.metrics.metricbase import MetricName

    return container.get_counter(MetricName("inference", name)).get_cumulative()


@pytest.fixture
def metrics():
    """A Beam metrics container for this thread, as a running step has (metric_test.py)."""
    from apache_beam.metrics.execution import MetricsContainer
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    container = MetricsContainer("test-step")
    sampler = statesampler.StateSampler("", CounterFactory())
    statesampler.set_current_tracker(sampler)
    state = sampler.scoped_state("test-step", "process", metrics_container=container)
    sampler.start()
    try:
        with state:
            yield container
    finally:
        sampler.stop()
        statesampler.set_current_tracker(None)


@pytest.mark.parametrize(
    "error",
    [OSError("model.keras missing"), ValueError("bad file"), RuntimeError("tf"), KeyError("x")],
    ids=lambda e: type(e).__name__,
)
def test_any_load_failure_keeps_the_last_good_model_and_is_counted(error, metrics):
    pointer = {"v": "v1"}

    def load(version):
        if version == "bad":
            raise error
        return f"model-{version}"

    model = HotSwapModel(lambda: pointer["v"], load, poll_seconds=0)
    assert model.acquire() == ("v1", "model-v1")
    pointer["v"] = "bad"
    assert model.acquire() == ("v1", "model-v1")
    assert model.acquire() == ("v1", "model-v1")  # retried at the next poll, still kept
    assert _counter(metrics, "model_load_errors") == 2
    assert _counter(metrics, "model_loads") == 1
    pointer["v"] = "v2"
    assert model.acquire() == ("v2", "model-v2")
    assert (_counter(metrics, "model_loads"), _counter(metrics, "model_swaps")) == (2, 1)


def test_an_unreadable_pointer_keeps_serving_and_is_counted(metrics):
    state = {"fail": False}

    def current():
        if state["fail"]:
            raise ConnectionError("storage unavailable")
        return "v1"

    model = HotSwapModel(current, lambda v: f"model-{v}", poll_seconds=0)
    assert model.acquire() == ("v1", "model-v1")
    state["fail"] = True
    assert model.acquire() == ("v1", "model-v1")
    assert _counter(metrics, "model_pointer_errors") == 1


def test_a_slow_load_does_not_block_other_threads():
    pointer = {"v": "v1"}
    loading, release = threading.Event(), threading.Event()

    def load(version):
        if version == "v2":
            loading.set()
            assert release.wait(timeout=30)
        return f"model-{version}"

    model = HotSwapModel(lambda: pointer["v"], load, poll_seconds=0)
    assert model.acquire() == ("v1", "model-v1")
    pointer["v"] = "v2"
    loader = threading.Thread(target=model.acquire)
    loader.start()
    try:
        assert loading.wait(timeout=30)
        # v2 is being loaded on the other thread: this one still predicts with v1, now.
        got = []
        other = threading.Thread(target=lambda: got.append(model.acquire()))
        other.start()
        other.join(timeout=5)
        assert not other.is_alive(), "blocked behind the load"
        assert got == [("v1", "model-v1")]
    finally:
        release.set()
        loader.join(timeout=30)
    assert model.acquire() == ("v2", "model-v2")


def test_before_the_first_load_other_threads_wait_for_it_instead_of_skipping():
    loading, release = threading.Event(), threading.Event()

    def load(version):
        loading.set()
        assert release.wait(timeout=30)
        return f"model-{version}"

    model = HotSwapModel(lambda: "v1", load, poll_seconds=60)
    first = threading.Thread(target=model.acquire)
    first.start()
    assert loading.wait(timeout=30)
    seen = []
    second = threading.Thread(target=lambda: seen.append(model.acquire()))
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive()  # waiting for the first load, not skipping the batch
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert seen == [("v1", "model-v1")]


# ------------------------------------------------- the real handler on a registry


class _Loaded:
    """A stand-in for a loaded version (weak-referenceable)."""

    def __init__(self, version):
        self.version = version


def test_a_swapped_out_model_is_released():
    import gc
    import weakref

    pointer = {"v": "v1"}
    refs = {}

    def load(version):
        loaded = _Loaded(version)
        refs[version] = weakref.ref(loaded)
        return loaded

    model = HotSwapModel(lambda: pointer["v"], load, poll_seconds=0)
    assert model.acquire()[0] == "v1"
    pointer["v"] = "v2"
    assert model.acquire()[0] == "v2"
    gc.collect()
    assert refs["v1"]() is None  # nothing keeps the old version once swapped out
    assert refs["v2"]() is not None


@pytest.fixture
def two_versions(tmp_path):
    """A registry with v_no (always predicts ~0) current and v_yes (always ~1)."""
    from model.registry import ModelRegistry
    from tests.transforms.test_inference import constant_model

    registry = ModelRegistry(str(tmp_path / "registry"))
    v_no = registry.publish(constant_model(-5.0), {"note": "no"}, status="passed")
    v_yes = registry.publish(constant_model(5.0), {"note": "yes"}, status="passed")
    registry.promote(v_no)
    return registry, v_no, v_yes


def _batch(n: int, first: int = 0) -> list[np.ndarray]:
    from model.features import encode_features
    from transforms.validation import validate_payload

    return [
        encode_features(
            validate_payload(traffic_payload(f"S{first + i}"), TRAFFIC, f"m{i}")["features"],
            TRAFFIC,
        )
        for i in range(n)
    ]


def test_the_handler_scores_a_batch_with_one_model_call_and_numpy_rows(two_versions):
    from model.handler import RegistryModelHandler

    registry, v_no, _ = two_versions
    handler = RegistryModelHandler(registry.root, poll_seconds=60)
    model = handler.load_model()
    batch = _batch(5)
    results = list(handler.run_inference(batch, model))
    assert [r.model_id for r in results] == [v_no] * 5  # the version only
    assert all(isinstance(r.inference, np.ndarray) for r in results)
    assert all(r.example is e for r, e in zip(results, batch, strict=True))
    assert all(float(r.inference[0]) < 0.01 for r in results)
    assert handler.get_num_bytes(batch) == sum(e.nbytes for e in batch)
    assert handler.batch_elements_kwargs() == {}


def test_versions_swapped_while_batches_run_on_several_threads(two_versions):
    """Every batch is scored wholly by one version; none is lost; nothing raises."""
    from model.handler import RegistryModelHandler

    registry, v_no, v_yes = two_versions
    handler = RegistryModelHandler(registry.root, poll_seconds=0)
    model = handler.load_model()
    stop = threading.Event()
    errors: list[BaseException] = []
    scored: list[tuple[int, list]] = []
    lock = threading.Lock()

    versions_seen: set[str] = set()
    deadline = time.monotonic() + 120

    def score(worker: int):
        # At least 25 batches each, and on until both versions have scored a batch
        # (a loaded machine may load slower than 25 batches take), within the deadline.
        try:
            i = 0
            while i < 25 or (len(versions_seen) < 2 and time.monotonic() < deadline):
                batch = _batch(16, first=worker * 100000 + i * 16)
                results = list(handler.run_inference(batch, model))
                with lock:
                    scored.append((len(batch), results))
                    versions_seen.update(r.model_id for r in results)
                i += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def swap():
        target = v_yes
        while not stop.is_set():
            registry.promote(target, reason="swap drill")
            target = v_no if target == v_yes else v_yes
            stop.wait(0.05)

    swapper = threading.Thread(target=swap)
    workers = [threading.Thread(target=score, args=(w,)) for w in range(4)]
    swapper.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    stop.set()
    swapper.join(timeout=30)
    assert not errors, errors
    assert len(scored) >= 100  # no batch lost (each worker's batches are all here)
    assert sum(size for size, _ in scored) == sum(len(r) for _, r in scored)
    seen = set()
    for size, results in scored:
        assert len(results) == size  # no element lost
        (version,) = {r.model_id for r in results}  # one version per batch ...
        expect_yes = version == v_yes
        # ... and that version's model scored every row of it.
        assert all((float(r.inference[0]) > 0.5) == expect_yes for r in results), version
        seen.add(version)
    assert seen == {v_no, v_yes}  # swaps really happened mid-run


@pytest.mark.parametrize("backend", ["local", "gcs"])
def test_drill_nan_or_unloadable_candidates_are_rejected_and_serving_is_unaffected(
    backend, request, tmp_path
):
    from model.handler import RegistryModelHandler
    from model.registry import ModelRegistry
    from tests.transforms.test_inference import constant_model
    from trainer.gates import infra_check

    root = str(tmp_path / "registry")
    if backend == "gcs":
        root = request.getfixturevalue("gcs_bucket") + "/registry"
    registry = ModelRegistry(root)
    good = registry.publish(constant_model(-5.0), {"note": "good"}, status="passed")
    registry.promote(good)
    handler = RegistryModelHandler(root, poll_seconds=0)
    serving = handler.load_model()
    x = np.stack(_batch(8))

    nan_model = constant_model(0.0)
    nan_model.set_weights([np.full_like(w, np.nan) for w in nan_model.get_weights()])
    outputs_nan = registry.publish(nan_model, {"note": "NaN outputs"})
    crashes = registry.publish(constant_model(5.0), {"note": "corrupt model.keras"})
    registry._store.write(f"versions/{crashes}/model.keras", b"not a keras file")

    for candidate, finding in ((outputs_nan, "NaN or infinite"), (crashes, "does not load")):
        result = infra_check(registry, candidate, x, task=TRAFFIC.label.task)
        assert not result.passed
        assert any(finding in reason for reason in result.reasons), result.reasons
        registry.set_status(candidate, "rejected", result.reasons)
        with pytest.raises(ValueError, match="rejected"):
            registry.promote(candidate)
    assert registry.current_version() == good

    # Even a corrupt version forced past the gates is not served: the handler keeps
    # the last good model and every batch is still scored by it.
    registry.set_status(crashes, "passed", ["forced by hand"])
    registry.promote(crashes, reason="operator error")
    results = list(handler.run_inference(_batch(8), serving))
    assert {r.model_id for r in results} == {good}
    assert all(float(r.inference[0]) < 0.01 for r in results)


def test_a_dense_stack_runs_as_numpy_and_agrees_with_tensorflow(two_versions):
    from model.handler import load_predict_fn, numpy_forward
    from model.keras_model import build_model

    model = build_model(TRAFFIC, seed=4)
    fast = numpy_forward(model)
    assert fast is not None
    x = np.stack(_batch(64))
    np.testing.assert_allclose(fast(x), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)

    registry, v_no, _ = two_versions
    predict = load_predict_fn(registry, v_no)
    assert predict(x).shape == (64, 1)
    assert predict.__qualname__.startswith("numpy_forward")  # the fast path was chosen


def test_other_models_run_through_tensorflow(tmp_path):
    import keras

    from model.features import feature_dim
    from model.handler import load_predict_fn, numpy_forward
    from model.registry import ModelRegistry

    inputs = keras.Input(shape=(feature_dim(TRAFFIC),))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(4, activation="elu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    assert numpy_forward(model) is None
    registry = ModelRegistry(str(tmp_path / "registry"))
    version = registry.publish(model, {"note": "not a plain dense stack"})
    x = np.stack(_batch(8))
    predict = load_predict_fn(registry, version)
    assert predict.__qualname__.startswith("load_predict_fn")
    np.testing.assert_allclose(predict(x), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_loaded_version_releases_its_keras_model(two_versions, monkeypatch, fast_path):
    """Once a predict function is dropped (a swap), its Keras model can be freed."""
    import gc
    import weakref

    from model import handler as handler_module

    registry, v_no, _ = two_versions
    if not fast_path:
        monkeypatch.setattr(handler_module, "numpy_forward", lambda model: None)
    refs = []
    load_keras = registry.load_keras

    def tracked(version):
        loaded = load_keras(version)
        refs.append(weakref.ref(loaded))
        return loaded

    monkeypatch.setattr(registry, "load_keras", tracked)
    predict = handler_module.load_predict_fn(registry, v_no)
    assert predict.__qualname__.startswith("numpy_forward" if fast_path else "load_predict_fn")
    assert predict(np.stack(_batch(2))).shape == (2, 1)
    del predict
    gc.collect()
    assert [r() for r in refs] == [None]


def test_a_numpy_pass_that_disagrees_falls_back_to_tensorflow(two_versions, monkeypatch):
    from model import handler as handler_module

    registry, v_no, _ = two_versions
    monkeypatch.setattr(handler_module, "numpy_forward", lambda model: lambda x: x[:, :1] * 0 + 7)
    predict = handler_module.load_predict_fn(registry, v_no)
    assert predict.__qualname__.startswith("load_predict_fn")
    assert float(predict(np.stack(_batch(2)))[0, 0]) < 0.01
