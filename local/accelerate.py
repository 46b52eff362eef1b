"""Local-only speed-ups for Beam's legacy bundle-based DirectRunner.

The DirectRunner that runs our streaming pipeline locally (Beam 2.77) pulls
10 Pub/Sub messages per bundle, re-inspects every DoFn signature per bundle,
unpickles and sets up every DoFn per bundle, checks each BigQuery row's size
by walking every module's globals, and visits every key's timers on every
scheduling pass (read from Beam 2.77's ``apache_beam/runners/direct/`` source). This module
patches those costs away for the local runner only:

    from local.accelerate import accelerate, restore
    accelerate(pull_size=1000)   # idempotent; before the pipeline is built
    ...
    restore()                    # undoes every patch (tests)

or ``with accelerated(): ...``. ``python -m local.pipeline`` applies it and
then runs ``pipelines.main``. Production code never imports ``local``, so
Dataflow never sees any of this. Every patch leaves results unchanged: the
same rows land, a refused BigQuery row still reaches the dead letters.

The patches rely on Beam internals; ``check_beam_internals()`` (run by
``accelerate`` and by ``tests/local/test_accelerate.py``) fails loudly when
they change.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from local import accelerate_sinks, accelerate_state, accelerate_timers
from local.patching import changed_sources, missing_attributes, missing_source, undo_all
from local.patching import set_attr as _set

_LOG = logging.getLogger(__name__)

BEAM_VERSION = "2.77.0"
DEFAULT_PULL_SIZE = 1000
PULL_SIZE_ENV = "LOCAL_PUBSUB_PULL_SIZE"
PATCHES_ENV = "LOCAL_ACCELERATE_PATCHES"

# sha256 of the Beam 2.77 methods this module replaces with edited copies (or relies
# on): a changed hash means Beam changed them, and the copies must be reviewed.
_SOURCE_SHA256 = {
    "_ParDoEvaluator.start_bundle": (
        "23c7e2f6f26f091dd2c51711a19deebae07f76c9032a110fce51ca552b3fd13e"
    ),
    "_ParDoEvaluator.finish_bundle": (
        "26c32886c271dabb0632e50ec05c8386e224c54e3bb45c41c727589256cce5f7"
    ),
    "_CombiningValueStateTag.without_extraction": (
        "ddc5e69fd2d1c598d15bb4340fa2581bebd126bdd1bb34a4bc6bfa5fe3fe95f2"
    ),
    "_ReadModifyWriteStateTag.with_prefix": (
        "0ed4b49b641b7975d3f80edbd3f53cf8be85bf371b162e2ba0c3013a85f2df49"
    ),
    "_SetStateTag.with_prefix": (
        "6b916b98732a37f131e093f8bb5412600997e5fb7c5ff51b7db70db746624698"
    ),
    "_CombiningValueStateTag.with_prefix": (
        "aa43e6d6235bb209db73881c6cb97caa008bfbce997d5e45bd774db122b6ed42"
    ),
    "_ListStateTag.with_prefix": (
        "21096ccd59d2592ef4dc16caf40e2da1db7da497fada22b877444aad175cd88e"
    ),
    "_WatermarkHoldStateTag.with_prefix": (
        "631dc3b315b5b427bf1ff78e62c742b2652ae6c99b76a9604b88fabb3069ef2d"
    ),
    "InMemoryUnmergedState.copy": (
        "ee2487c6676bf0d0826d043954973486fa7e80f71f4c4276707b3a88eac1c94e"
    ),
}

_lock = threading.RLock()
_applied: set[str] = set()
_pull_size = DEFAULT_PULL_SIZE


# ----------------------------------------------------------------- Pub/Sub pulls


class _LargerPulls:
    """A Pub/Sub subscriber client whose ``pull`` asks for ``size`` messages."""

    def __init__(self, client: Any, size: int):
        self._client = client
        self._size = size

    def pull(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["max_messages"] = self._size
        return self._client.pull(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _pubsub_evaluator_class() -> type:
    """``_PubSubReadEvaluator`` with a larger pull; everything else is Beam's.

    Beam's ``_read_from_pubsub`` (element conversion, event time from the
    timestamp attribute or the publish time, acknowledgement) is reused as is:
    only the client it pulls with is wrapped, so it works with and without a
    ``timestamp_attribute``.
    """
    from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator

    class _LargePullPubSubReadEvaluator(_PubSubReadEvaluator):
        @classmethod
        def _get_subscriber_client(cls, transform):
            return _LargerPulls(super()._get_subscriber_client(transform), _pull_size)

    return _LargePullPubSubReadEvaluator


def larger_pubsub_pulls() -> None:
    """Pulls up to ``pull_size`` Pub/Sub messages per bundle instead of 10.

    Beam 2.77's DirectRunner pulls with a hard-coded ``max_messages=10`` and
    then drains the whole graph before the next pull, so every per-bundle cost
    is paid per 10 messages. Registered through the runner's evaluator-override
    hook (``TransformEvaluatorRegistry._test_evaluators_overrides``). Safe: the
    same messages are read, converted and acknowledged the same way, in larger
    bundles.
    """
    from apache_beam.runners.direct.direct_runner import _DirectReadFromPubSub
    from apache_beam.runners.direct.transform_evaluator import TransformEvaluatorRegistry

    overrides = dict(TransformEvaluatorRegistry._test_evaluators_overrides)
    overrides[_DirectReadFromPubSub] = _pubsub_evaluator_class()
    _set(TransformEvaluatorRegistry, "_test_evaluators_overrides", overrides)


# ----------------------------------------------------------------- DoFn specs

_spec_cache: dict[Any, tuple[frozenset, frozenset]] = {}


def _spec_key(dofn: Any) -> tuple:
    """What ``get_dofn_specs`` depends on: the class, plus bound methods set on
    the instance (``beam.Map(obj.method)`` stores one as ``process``)."""
    own = tuple(
        sorted(
            (name, value.__func__)
            for name, value in vars(dofn).items()
            if isinstance(value, types.MethodType)
        )
        if hasattr(dofn, "__dict__")
        else ()
    )
    return (type(dofn), own)


def cached_dofn_specs() -> None:
    """Caches ``get_dofn_specs`` / ``is_stateful_dofn`` per DoFn class.

    Beam inspects every method signature of a DoFn each time it asks whether
    it is stateful, which the DirectRunner does several times per bundle per
    ParDo. The specs are class attributes (parameter defaults of its methods),
    so they are the same for every instance of a class; instance-level bound
    methods are part of the cache key. Patched in ``userstate`` and in every
    module that imported the functions by name (``transform_evaluator``).
    """
    from apache_beam.runners.direct import transform_evaluator
    from apache_beam.transforms import userstate

    original = userstate.get_dofn_specs

    def get_dofn_specs(dofn):
        try:
            key = _spec_key(dofn)
            hash(key)
        except TypeError:
            return original(dofn)
        specs = _spec_cache.get(key)
        if specs is None:
            state, timers = original(dofn)
            specs = _spec_cache[key] = (frozenset(state), frozenset(timers))
        return set(specs[0]), set(specs[1])

    def is_stateful_dofn(dofn):
        state, timers = get_dofn_specs(dofn)
        return bool(state or timers)

    for module in (userstate, transform_evaluator):
        _set(module, "get_dofn_specs", get_dofn_specs)
        _set(module, "is_stateful_dofn", is_stateful_dofn)


_arguments_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_function_arguments() -> None:
    """Inspects each DoFn method's parameters once, not at every bundle's start.

    ``DoFnRunner.__init__`` (run at every bundle's start by the DirectRunner)
    builds a ``DoFnSignature``, whose ``MethodWrapper``s call
    ``core.get_function_arguments`` for every DoFn method, and that runs
    ``inspect.signature``: ~5% of the pipeline's CPU at 300 events/s. The
    answer depends only on the function and on whether it is bound (a bound
    method drops ``self``), so it is kept per function object (weakly: a
    function that dies takes its entry with it). A DoFn that answers through
    its own ``_inspect_<method>`` (``beam.Map``'s wrapper), and callables
    that are not plain functions, are asked every time as before.
    """
    from apache_beam.transforms import core

    original = core.get_function_arguments

    def get_function_arguments(obj, func):
        if hasattr(obj, f"_inspect_{func}"):
            return original(obj, func)
        method = getattr(obj, func)
        if isinstance(method, types.MethodType):
            function, bound = method.__func__, True
        elif isinstance(method, types.FunctionType):
            function, bound = method, False
        else:
            return original(obj, func)
        per_function = _arguments_cache.get(function)
        if per_function is None:
            per_function = _arguments_cache[function] = {}
        answer = per_function.get(bound)
        if answer is None:
            args, defaults = original(obj, func)
            answer = per_function[bound] = (tuple(args), tuple(defaults))
        return list(answer[0]), list(answer[1])

    _set(core, "get_function_arguments", get_function_arguments)


# ----------------------------------------------------------------- DoFn reuse

_dofn_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_all_pooled: list[Any] = []


def _acquire_dofn(applied_ptransform: Any, make: Callable[[], Any]) -> tuple[Any, bool]:
    """A set-up DoFn copy for this step from its pool, or a new one (``False``)."""
    with _lock:
        pool = _dofn_pools.setdefault(applied_ptransform, [])
        if pool:
            return pool.pop(), True
    return make(), False


def _release_dofn(applied_ptransform: Any, dofn: Any, new: bool) -> None:
    with _lock:
        _dofn_pools.setdefault(applied_ptransform, []).append(dofn)
        if new:
            _all_pooled.append(weakref.ref(dofn))


def _pardo_evaluator_class() -> type:
    """``_ParDoEvaluator`` whose DoFn copies are set up once and reused."""
    from typing import Any as AnyType

    from apache_beam import coders
    from apache_beam.internal import pickler
    from apache_beam.runners.common import DoFnRunner, DoFnState
    from apache_beam.runners.direct import transform_evaluator as te
    from apache_beam.runners.direct.direct_userstate import DirectUserStateContext
    from apache_beam.runners.direct.util import TransformResult
    from apache_beam.utils import counters

    class _ReusingParDoEvaluator(te._ParDoEvaluator):
        # start_bundle and finish_bundle are Beam 2.77's, edited where marked
        # (checked by source hash in check_beam_internals).
        def start_bundle(self):
            transform = self._applied_ptransform.transform

            self._tagged_receivers = te._TaggedReceivers(self._evaluation_context)
            for output_tag in self._applied_ptransform.outputs:
                output_pcollection = te.pvalue.PCollection(None, tag=output_tag)
                output_pcollection.producer = self._applied_ptransform
                self._tagged_receivers[output_tag] = self._evaluation_context.create_bundle(
                    output_pcollection
                )
                self._tagged_receivers[output_tag].tag = output_tag

            self._counter_factory = counters.CounterFactory()

            # Edited: a pooled copy that is already set up, else a new copy.
            dofn, self._reused = _acquire_dofn(
                self._applied_ptransform,
                lambda: (
                    pickler.roundtrip(transform.dofn)
                    if self._perform_dofn_pickle_test
                    else transform.dofn
                ),
            )
            self._dofn = dofn

            args = transform.args if hasattr(transform, "args") else []
            kwargs = transform.kwargs if hasattr(transform, "kwargs") else {}

            self.user_state_context = None
            self.user_timer_map = {}
            if te.is_stateful_dofn(dofn):
                kv_type_hint = self._applied_ptransform.inputs[0].element_type
                if kv_type_hint and kv_type_hint != AnyType:
                    coder = coders.registry.get_coder(kv_type_hint)
                    self.key_coder = coder.key_coder()
                else:
                    self.key_coder = coders.registry.get_coder(AnyType)

                self.user_state_context = DirectUserStateContext(
                    self._step_context, dofn, self.key_coder
                )
                _, all_timer_specs = te.get_dofn_specs(dofn)
                for timer_spec in all_timer_specs:
                    self.user_timer_map[f"user/{timer_spec.name}"] = timer_spec

            self.runner = DoFnRunner(
                dofn,
                args,
                kwargs,
                self._side_inputs,
                self._applied_ptransform.inputs[0].windowing,
                tagged_receivers=self._tagged_receivers,
                step_name=self._applied_ptransform.full_label,
                state=DoFnState(self._counter_factory),
                user_state_context=self.user_state_context,
            )
            if not self._reused:  # Edited: setup() once per copy.
                self.runner.setup()
            self.runner.start()

        def finish_bundle(self):
            self.runner.finish()
            # Edited: no teardown; the copy goes back to the pool.
            if self._perform_dofn_pickle_test:
                _release_dofn(self._applied_ptransform, self._dofn, not self._reused)
            else:
                self.runner.teardown()
            bundles = list(self._tagged_receivers.values())
            result_counters = self._counter_factory.get_counters()
            if self.user_state_context:
                self.user_state_context.commit()
                self.user_state_context.reset()
            return TransformResult(self, bundles, [], result_counters, None)

    return _ReusingParDoEvaluator


def reused_dofns() -> None:
    """Sets each ParDo's DoFn copy up once and reuses it across bundles.

    The DirectRunner unpickles every DoFn and runs ``setup()``/``teardown()``
    around every bundle (so ``WriteToBigQuery`` builds clients and inference
    looks its model up again each time). Runners such as Dataflow reuse a
    DoFn instance across bundles, and Beam's DoFn contract allows it: per
    bundle, only ``start_bundle``/``finish_bundle`` run. Copies are pooled per
    step, so concurrent bundles never share one; they are torn down by
    ``restore()``, else at process exit without ``teardown()`` (best effort in
    Beam's contract too). Registered through the evaluator-override hook.
    """
    from apache_beam.runners.direct.transform_evaluator import TransformEvaluatorRegistry
    from apache_beam.transforms import core

    overrides = dict(TransformEvaluatorRegistry._test_evaluators_overrides)
    overrides[core.ParDo] = _pardo_evaluator_class()
    _set(TransformEvaluatorRegistry, "_test_evaluators_overrides", overrides)


def _teardown_pooled() -> None:
    with _lock:
        refs = list(_all_pooled)
        _all_pooled.clear()
        _dofn_pools.clear()
    for ref in refs:
        dofn = ref()
        if dofn is None:
            continue
        try:
            dofn.teardown()
        except Exception:  # teardown is best effort, as in Beam
            _LOG.warning("teardown of %r failed", dofn, exc_info=True)


# ----------------------------------------------------------------- windowed state


def reused_no_extraction_tags() -> None:
    """Builds each state tag's prefixed and "no extraction" twins once, not per call.

    ``_CombiningValueStateTag.without_extraction`` defines a new CombineFn
    class on every call; the trigger driver calls it for every element and
    window of every windowed grouping (106k class definitions in a 30 s
    profile of our graph). A nested trigger (``Repeatedly``, an ``AfterWatermark``'s
    late firings) reads its state through ``NestedContext``, which first builds
    a new prefixed tag (``with_prefix``) on every call, so a twin cached on
    that tag was never found again (8% of a profile of the full loop).
    Both twins depend only on the tag's name, prefix and CombineFn (or
    timestamp combiner), so each is cached on the tag it came from: same
    names, same functions.
    """
    from apache_beam.transforms import trigger
    from apache_beam.transforms.trigger import _CombiningValueStateTag

    for cls in PREFIXED_TAG_CLASSES:
        _set(getattr(trigger, cls), "with_prefix", _cached_with_prefix(getattr(trigger, cls)))
    original = _CombiningValueStateTag.without_extraction

    def without_extraction(self):
        twin = self.__dict__.get("_accelerate_no_extraction")
        if twin is None:
            twin = self.__dict__["_accelerate_no_extraction"] = original(self)
        return twin

    _set(_CombiningValueStateTag, "without_extraction", without_extraction)


PREFIXED_TAG_CLASSES = (
    "_ReadModifyWriteStateTag",
    "_SetStateTag",
    "_CombiningValueStateTag",
    "_ListStateTag",
    "_WatermarkHoldStateTag",
)


def _cached_with_prefix(cls: type) -> Callable:
    original = cls.with_prefix

    def with_prefix(self, prefix):
        cache = self.__dict__.get("_accelerate_prefixed")
        if cache is None:
            cache = self.__dict__["_accelerate_prefixed"] = {}
        twin = cache.get(prefix)
        if twin is None:
            twin = cache[prefix] = original(self, prefix)
        return twin

    return with_prefix


@functools.cache
def _immutable_types() -> frozenset:
    from apache_beam.transforms.window import GlobalWindow, IntervalWindow
    from apache_beam.utils.timestamp import Duration, Timestamp

    plain = (int, float, bool, str, bytes, type(None))
    return frozenset(plain + (Timestamp, Duration, IntervalWindow, GlobalWindow))


def copy_plain(value: Any) -> Any:
    """``copy.deepcopy(value)`` for dicts, lists and tuples of immutable values, faster.

    Numbers, strings, ``Timestamp``s and windows (immutable; windows are dict
    keys) are shared, not rebuilt; containers are copied, aliases kept as
    ``deepcopy`` keeps them; any other object is handed to ``copy.deepcopy``.
    """
    return _copy_plain(value, {}, _immutable_types())


def _copy_plain(value: Any, memo: dict, immutable: frozenset) -> Any:
    kind = type(value)
    if kind in immutable:
        return value
    if id(value) in memo:
        return memo[id(value)]
    out: Any
    if kind is dict:
        out = memo[id(value)] = {}
        for key, item in value.items():
            out[_copy_plain(key, memo, immutable)] = _copy_plain(item, memo, immutable)
    elif kind is list:
        out = memo[id(value)] = []
        out.extend(_copy_plain(item, memo, immutable) for item in value)
    elif kind is tuple:
        out = memo[id(value)] = tuple(_copy_plain(item, memo, immutable) for item in value)
    else:
        out = memo[id(value)] = copy.deepcopy(value)
    return out


def shallow_timer_copies() -> None:
    """Copies a key's timers without ``copy.deepcopy`` when its state is copied.

    The DirectRunner copies a key's state (``InMemoryUnmergedState.copy``) each
    time a bundle touches it, deep-copying the timer table: window -> {(name,
    time domain, tag): Timestamp}. Windows, timer names and Timestamps are
    immutable, so copying the two dict levels gives an equal, independent
    table. ``global_state`` (a merging trigger driver's window -> ids table)
    is copied by ``copy_plain``; element lists are copied as Beam does.
    """
    import collections

    from apache_beam.transforms.trigger import InMemoryUnmergedState

    def copy_state(self):
        cloned_object = InMemoryUnmergedState(defensive_copy=self.defensive_copy)
        cloned_object.timers = collections.defaultdict(
            dict, {window: dict(timers) for window, timers in self.timers.items()}
        )
        cloned_object.global_state = copy_plain(self.global_state)
        for window in self.state:
            for tag in self.state[window]:
                cloned_object.state[window][tag] = copy.copy(self.state[window][tag])
        return cloned_object

    _set(InMemoryUnmergedState, "copy", copy_state)


# ----------------------------------------------------------------- public API

# In order of measured gain on this project's graph (benchmarks.run --ladder); names for
# LOCAL_ACCELERATE_PATCHES and ``accelerate(patches=...)``.
PATCHES: dict[str, Callable[[], None]] = {
    "pubsub_pulls": larger_pubsub_pulls,
    "dofn_specs": cached_dofn_specs,
    "function_arguments": cached_function_arguments,
    "row_size_check": accelerate_sinks.bounded_row_size_check,
    "timers": accelerate_timers.indexed_timers,
    "bigquery_clients": accelerate_sinks.shared_bigquery_clients,
    "dofn_reuse": reused_dofns,
    "sink_reshuffle": accelerate_sinks.sinks_without_reshuffle,
    "sink_thread": accelerate_sinks.sink_thread,
    "combine_tags": reused_no_extraction_tags,
    "timer_copies": shallow_timer_copies,
    **accelerate_state.PATCHES,  # set_state_once, forget_empty_keys, expired_window_gc, sweep_…
}


def check_beam_internals() -> list[str]:
    """What changed in the Beam internals the patches rely on (empty: none)."""
    import apache_beam
    from apache_beam.runners.direct import transform_evaluator as te
    from apache_beam.runners.direct import watermark_manager as wm
    from apache_beam.transforms import trigger, userstate

    problems = []
    if apache_beam.__version__ != BEAM_VERSION:
        problems.append(
            f"apache-beam {apache_beam.__version__}, patches written for {BEAM_VERSION}"
        )
    checks = {
        te.TransformEvaluatorRegistry: ["_test_evaluators_overrides"],
        te: ["_PubSubReadEvaluator", "_ParDoEvaluator", "get_dofn_specs", "is_stateful_dofn"],
        te._PubSubReadEvaluator: ["_get_subscriber_client", "_read_from_pubsub"],
        userstate: ["get_dofn_specs", "is_stateful_dofn"],
        wm._TransformWatermarks: ["extract_transform_timers"],
        trigger._CombiningValueStateTag: ["without_extraction"],
        trigger.InMemoryUnmergedState: ["copy"],
    }
    problems += missing_attributes(checks)
    if problems:
        return problems
    problems += missing_source(
        [
            (
                te._PubSubReadEvaluator._read_from_pubsub,
                ["self._get_subscriber_client(", "max_messages="],
            )
        ]
    )
    owners = {
        "_ParDoEvaluator": te._ParDoEvaluator,
        **{cls: getattr(trigger, cls) for cls in PREFIXED_TAG_CLASSES},
        "InMemoryUnmergedState": trigger.InMemoryUnmergedState,
    }
    problems += changed_sources(owners, _SOURCE_SHA256, "the copies in local.accelerate")
    return (
        problems
        + accelerate_sinks.check_internals()
        + accelerate_state.check_internals()
        + accelerate_timers.check_internals()
    )


def pull_size_from_env(default: int = DEFAULT_PULL_SIZE) -> int:
    """``LOCAL_PUBSUB_PULL_SIZE`` (a positive integer), else ``default``."""
    raw = os.environ.get(PULL_SIZE_ENV, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{PULL_SIZE_ENV}={raw!r}: expected a positive integer")
    return value


def patches_from_env() -> list[str] | None:
    """``LOCAL_ACCELERATE_PATCHES`` as patch names (comma-separated), else None (all)."""
    raw = os.environ.get(PATCHES_ENV)
    if raw is None or raw.strip() in ("", "all"):
        return None
    names = [n.strip() for n in raw.split(",") if n.strip() and n.strip() != "none"]
    unknown = sorted(set(names) - set(PATCHES))
    if unknown:
        raise ValueError(f"{PATCHES_ENV}: unknown patches {unknown}; known: {sorted(PATCHES)}")
    return names


def accelerate(pull_size: int | None = None, patches: Iterable[str] | None = None) -> list[str]:
    """Applies the patches (all, or the named ones); idempotent.

    Args:
        pull_size: Pub/Sub messages per pull (default ``LOCAL_PUBSUB_PULL_SIZE``
            or 1000). Calling again only updates it.
        patches: names from ``PATCHES``; None: all of them.

    Returns:
        The names of the patches now applied.

    Raises:
        RuntimeError: Beam's internals differ from what the patches expect.
        ValueError: an unknown patch name or a pull size below 1.
    """
    global _pull_size
    size = pull_size_from_env() if pull_size is None else pull_size
    if size < 1:
        raise ValueError(f"pull_size={size}: expected a positive integer")
    names = list(PATCHES) if patches is None else list(patches)
    unknown = sorted(set(names) - set(PATCHES))
    if unknown:
        raise ValueError(f"unknown patches {unknown}; known: {sorted(PATCHES)}")
    with _lock:
        problems = check_beam_internals()
        if problems:
            raise RuntimeError(
                "local.accelerate: Beam internals changed; run without it "
                f"(LOCAL_ACCELERATE=0) or update it: {'; '.join(problems)}"
            )
        _pull_size = size
        for name in names:
            if name not in _applied:
                PATCHES[name]()
                _applied.add(name)
        _LOG.info("Local runner acceleration: %s (pull size %d)", sorted(_applied), _pull_size)
        return sorted(_applied)


def applied() -> list[str]:
    """Names of the patches currently applied."""
    return sorted(_applied)


def restore() -> None:
    """Undoes every patch and drops the caches; pooled DoFns are torn down."""
    global _pull_size
    with _lock:
        undo_all()
        _applied.clear()
        _spec_cache.clear()
        _arguments_cache.clear()
        accelerate_sinks.reset()
        _pull_size = DEFAULT_PULL_SIZE
    _teardown_pooled()


@contextlib.contextmanager
def accelerated(
    pull_size: int | None = None, patches: Iterable[str] | None = None
) -> Iterator[list[str]]:
    """``accelerate`` for a block, then ``restore``."""
    try:
        yield accelerate(pull_size, patches)
    finally:
        restore()
