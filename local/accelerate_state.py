"""Local-only patches that let Beam's legacy DirectRunner forget dead state.

Beam 2.77's bundle-based DirectRunner keeps, per stateful step, a dict
``encoded key -> InMemoryUnmergedState`` (``EvaluationContext.
_transform_keyed_states``, shared with ``_TransformWatermarks._keyed_states``)
and never removes a key from it, even once the key's user state is cleared
and its timers have fired. Windowed groupings (``GeneralTriggerDriver``,
run by ``_StreamingGroupAlsoByWindowEvaluator``) never garbage-collect a
window either: a window's id, pane indexes, trigger state and (accumulating)
elements stay in its key's state after the window has expired. So a
long-running local pipeline grows by every message id it deduplicated and
every window it aggregated (``python -m benchmarks.state_memory``).

Three patches, registered in ``local.accelerate.PATCHES``:

- ``forget_empty_keys``: after a bundle commits, a key whose state is empty
  (no timers, no state cells) is removed from the step's keyed states.
- ``expired_window_gc``: a non-merging window whose end + allowed lateness is
  behind the grouping's input watermark, with no pending timer and no
  watermark hold, is dropped from its key's state when the key is next
  processed.
- ``sweep_expired_windows``: every ``SWEEP_INTERVAL_SECONDS`` a windowed
  grouping step's keys are all swept the same way, and a key left empty is
  forgotten. A key that never comes back (a retired model version in the
  per-version quality windows, a sensor that went away) is otherwise kept
  forever with its last windows and, in accumulating mode, their elements:
  Beam's trigger driver sets no garbage-collection timer.

None changes what the pipeline outputs (tests/local/test_accelerate_state.py).
"""

from __future__ import annotations

import time
from typing import Any

from local.accelerate_timers import outstanding_firings
from local.patching import changed_sources
from local.patching import set_attr as _set

_WINDOW_IDS_TAG = "window_ids"  # MergeableStateAdapter.WINDOW_IDS

# sha256 of the Beam 2.77 methods these patches wrap or rely on (qualified name -> hash).
_SOURCE_SHA256 = {
    "EvaluationContext.handle_result": (
        "5f8b5c3277610476bbe238066932c43e7b5286d85a40ca429ac80a442addba95"
    ),
    "DirectStepContext.get_keyed_state": (
        "ec5a64913f5895226d956f38a4a0913b8cdcc03d8811d64c2ca5deb0548dc8d4"
    ),
    "_StreamingGroupAlsoByWindowEvaluator.process_element": (
        "94a7e5b04c968eef3f4216a02c087b9939ab7ba94e36cfd69b207a06716d93fa"
    ),
    "GeneralTriggerDriver.__init__": (
        "e288aa0049e9710d90062fe28aa89f9fcbd3ced4d9e9f203d9d5f39fe0b8766b"
    ),
    "GeneralTriggerDriver.process_elements": (
        "ca78277e750348aaceae4a6cce8f187763db509b11e9b066ba72a30fb3f678d9"
    ),
    "MergeableStateAdapter._get_id": (
        "32e0f86d12da8817f8f4656986d87c7fb3038ed1afe23a9c478060c18a24d81c"
    ),
    "InMemoryUnmergedState.add_state": (
        "c221ced1a408179d6d1bf9452c9c19f92b3b45c8bd5f93213d9ddc33ed7aa1e2"
    ),
    "InMemoryUnmergedState.get_state": (
        "a6b4f5837cb8c89daf9009fb4d5f5e80be8061565bb9460df2cffcec0ec31667"
    ),
    "InMemoryUnmergedState.get_earliest_hold": (
        "3c7a6f5c160188daad92d2e80c041d835de71592f9cd3ac3b7f884b0b670a680"
    ),
}


def _is_empty_value(value: Any) -> bool:
    """A stored state cell that reads the same as a missing one."""
    return isinstance(value, (list, dict)) and not value


def is_empty_state(state: Any) -> bool:
    """True when a key's ``InMemoryUnmergedState`` equals a fresh one.

    A missing cell reads as ``[]`` (``state`` is a defaultdict of lists) and a
    missing global cell as its default; the trigger driver's window-id map
    defaults to ``{}``. So a state whose timers are empty, whose cells are all
    empty lists and whose global cells are empty containers behaves exactly
    like the fresh state ``DirectStepContext.get_keyed_state`` creates.
    """
    timers = getattr(state, "timers", None)
    cells = getattr(state, "state", None)
    global_state = getattr(state, "global_state", None)
    if not isinstance(timers, dict) or not isinstance(cells, dict):
        return False
    if not isinstance(global_state, dict):
        return False
    if any(per_window for per_window in timers.values()):
        return False
    for per_window in cells.values():
        if any(not _is_empty_value(v) for v in per_window.values()):
            return False
    return all(_is_empty_value(v) for v in global_state.values())


def forget_empty_keys() -> None:
    """Drops a stateful step's key once its state is empty and it has no timers.

    ``EvaluationContext.handle_result`` stores every key a bundle touched in
    the step's keyed states and nothing ever removes one, so the dict (and
    each scheduling pass over it) grows with every key ever seen, e.g. every
    message id ``DeduplicateMessages`` expired. When a key's committed state
    is empty (``is_empty_state``), ``DirectStepContext.get_keyed_state``
    would create an identical fresh state for it, so removing it changes no
    read, no timer and no watermark hold (an empty state holds nothing).
    A key with a timer firing still to be delivered is kept (Beam extracts a
    due timer on every scheduling pass until a bundle clears it, so one timer
    can be delivered twice). The legacy
    runner has a single worker thread; removal happens under the
    evaluation context's and the step's watermark locks all the same.
    """
    from apache_beam.runners.direct.evaluation_context import EvaluationContext

    original = EvaluationContext.handle_result

    def handle_result(self, completed_bundle, completed_timers, result):
        committed = original(self, completed_bundle, completed_timers, result)
        touched = result.partial_keyed_state
        if touched:
            with self._lock:
                states = self._transform_keyed_states[result.transform]
                watermarks = self._watermark_manager.get_watermarks(result.transform)
                with watermarks._lock:
                    outstanding = outstanding_firings(watermarks).has_key
                    for key in list(touched):
                        state = states.get(key)
                        if outstanding(key):
                            continue  # a timer of it is still to be delivered
                        if state is not None and is_empty_state(state):
                            del states[key]
        return committed

    _set(EvaluationContext, "handle_result", handle_result)


def collect_expired_windows(
    state: Any, allowed_lateness: Any, input_watermark: Any, outstanding: Any = frozenset()
) -> int:
    """Removes expired, idle windows from a trigger driver's key state.

    ``state`` is the raw ``InMemoryUnmergedState`` of one key of a grouping
    whose window function does not merge, in the layout of
    ``MergeableStateAdapter``: global cell ``window_ids`` maps each window to
    its state ids; cells and timers are keyed by id. A window is dropped when
    ``input_watermark > window.end + allowed_lateness`` (the driver then
    ignores every new element for it), no timer is pending on its ids (no
    pane can fire for it), no timer firing is still to be delivered for them
    (``outstanding``: state ids; Beam may deliver a due timer twice, and the
    driver looks the window up by id) and no watermark hold is left in its
    cells. Returns the number of windows dropped.
    """
    window_ids = state.global_state.get(_WINDOW_IDS_TAG)
    if not window_ids:
        return 0
    dropped = 0
    for window in list(window_ids):
        if not input_watermark > window.end + allowed_lateness:
            continue
        ids = window_ids[window]
        if any(state.timers.get(i) or i in outstanding for i in ids):
            continue
        if any(state.state.get(i, {}).get("watermark") for i in ids):
            continue
        for i in ids:
            state.state.pop(i, None)
            state.timers.pop(i, None)
        del window_ids[window]
        dropped += 1
    return dropped


def expired_window_gc() -> None:
    """Garbage-collects expired windows of streaming GroupByKeys (non-merging).

    Beam's ``GeneralTriggerDriver`` keeps a window's id, pane indexes, trigger
    state and (accumulating mode) elements after the window expires; only a
    trigger that finishes clears its elements, and even then leaves a
    tombstone. Dataflow drops a window's state at end + allowed lateness.
    After each key is processed by ``_StreamingGroupAlsoByWindowEvaluator``,
    this drops that key's windows as described in ``collect_expired_windows``
    (the key's timer firings still to be delivered: ``_fired_timers``).
    Safe: the driver skips elements of an expired window before looking at
    its state, and with no timer pending nothing else can read it; merging
    window functions (sessions) are left alone, as a new window may merge
    with an expired one.
    """
    from apache_beam.runners.direct import transform_evaluator as te

    original = te._StreamingGroupAlsoByWindowEvaluator.process_element

    def process_element(self, element):
        original(self, element)
        windowing = self._applied_ptransform.transform.windowing
        if windowing.windowfn.is_merging():
            return
        kwi = element.value
        state = self._step_context.get_keyed_state(kwi.encoded_key)
        watermarks = self._evaluation_context._watermark_manager.get_watermarks(
            self._applied_ptransform
        )
        with watermarks._lock:
            outstanding = outstanding_firings(watermarks).windows_of(kwi.encoded_key)
        if collect_expired_windows(
            state, windowing.allowed_lateness, watermarks.input_watermark, outstanding
        ):
            self.keyed_holds[kwi.encoded_key] = state.get_earliest_hold()

    _set(te._StreamingGroupAlsoByWindowEvaluator, "process_element", process_element)


SWEEP_INTERVAL_SECONDS = 10.0  # wall clock, per windowed grouping step


def sweep_step(context: Any, transform: Any) -> tuple[int, int]:
    """Collects expired windows of every key of one windowed grouping step.

    ``collect_expired_windows`` on each key of the step (non-merging window
    functions only), under the evaluation context's and the step's watermark
    locks; a key left empty (``is_empty_state``) with no timer firing still to
    be delivered and no watermark hold is removed. Returns (windows dropped, keys removed).
    """
    windowing = transform.transform.windowing
    if windowing.windowfn.is_merging():
        return 0, 0
    watermarks = context._watermark_manager.get_watermarks(transform)
    input_watermark = watermarks.input_watermark
    windows = keys = 0
    with context._lock:
        states = context._transform_keyed_states[transform]
        with watermarks._lock:
            fired = outstanding_firings(watermarks)
            for key, state in list(states.items()):
                windows += collect_expired_windows(
                    state, windowing.allowed_lateness, input_watermark, fired.windows_of(key)
                )
                if (
                    not fired.has_key(key)
                    and key not in watermarks._keyed_earliest_holds
                    and is_empty_state(state)
                ):
                    del states[key]
                    keys += 1
    return windows, keys


def sweep_expired_windows() -> None:
    """Sweeps each windowed grouping's keys for expired windows, now and then.

    ``expired_window_gc`` collects a key's expired windows only when that key
    is processed again; Dataflow drops a window's state at end + allowed
    lateness whether or not its key comes back (a garbage-collection timer).
    After a bundle of a streaming ``GroupByKey`` (``_StreamingGroupAlsoByWindow``)
    commits, and at most every ``SWEEP_INTERVAL_SECONDS`` per step, this
    runs ``sweep_step`` on it. The same conditions as ``expired_window_gc``
    make it safe: an expired window takes no element, and one with no timer
    pending or to be delivered and no hold can fire no pane.
    """
    from apache_beam.runners.direct.direct_runner import _StreamingGroupAlsoByWindow
    from apache_beam.runners.direct.evaluation_context import EvaluationContext

    original = EvaluationContext.handle_result

    def handle_result(self, completed_bundle, completed_timers, result):
        committed = original(self, completed_bundle, completed_timers, result)
        transform = result.transform
        if isinstance(getattr(transform, "transform", None), _StreamingGroupAlsoByWindow):
            last = self.__dict__.setdefault("_accelerate_last_sweep", {})
            now = time.monotonic()
            if transform not in last or now - last[transform] >= SWEEP_INTERVAL_SECONDS:
                last[transform] = now
                sweep_step(self, transform)
        return committed

    _set(EvaluationContext, "handle_result", handle_result)


_PLAIN_SET_VALUES = (bool, int, str, bytes)


def set_state_values_once() -> None:
    """Stores a value added to a set state again, right after itself, only once.

    Beam's in-memory state keeps a set state as a list and appends every add.
    ``AfterProcessingTime`` (the late firings of our windowed groupings, the
    retraining count panes) adds ``True`` to its ``has_timer`` set for every
    element of a pane, so the list grows with the pane; it is copied with the
    key's state at every bundle, and a merging window's read builds a set from
    it: quadratic in a pane's elements (12% of an earlier profile of the batch
    benchmark at 20k elements; after the tag and copy patches of
    ``local.accelerate``, its gain there is within the benchmark's noise). A
    set state is read as a set (or, unmerged, tested for being empty), so an
    add equal to the last stored value changes no read. Only plain values
    (bool, int, str, bytes: user set state is stored encoded) are compared.
    """
    from apache_beam.transforms.trigger import InMemoryUnmergedState, _SetStateTag

    original = InMemoryUnmergedState.add_state

    def add_state(self, window, tag, value):
        if type(tag) is _SetStateTag and type(value) in _PLAIN_SET_VALUES:
            stored = self.state.get(window, {}).get(tag.tag)
            if stored and type(stored[-1]) is type(value) and stored[-1] == value:
                return
        original(self, window, tag, value)

    _set(InMemoryUnmergedState, "add_state", add_state)


PATCHES = {
    "set_state_once": set_state_values_once,
    "forget_empty_keys": forget_empty_keys,
    "expired_window_gc": expired_window_gc,
    "sweep_expired_windows": sweep_expired_windows,
}


def check_internals() -> list[str]:
    """What changed in the Beam internals these patches rely on (empty: none)."""
    from apache_beam.runners.direct import evaluation_context as ec
    from apache_beam.runners.direct import transform_evaluator as te
    from apache_beam.transforms import trigger

    owners = {
        "EvaluationContext": ec.EvaluationContext,
        "DirectStepContext": ec.DirectStepContext,
        "_StreamingGroupAlsoByWindowEvaluator": te._StreamingGroupAlsoByWindowEvaluator,
        "GeneralTriggerDriver": trigger.GeneralTriggerDriver,
        "MergeableStateAdapter": trigger.MergeableStateAdapter,
        "InMemoryUnmergedState": trigger.InMemoryUnmergedState,
    }
    problems = []
    if trigger.MergeableStateAdapter.WINDOW_IDS.tag != _WINDOW_IDS_TAG:
        problems.append("MergeableStateAdapter.WINDOW_IDS is no longer 'window_ids'")
    return problems + changed_sources(owners, _SOURCE_SHA256, "local.accelerate_state")
