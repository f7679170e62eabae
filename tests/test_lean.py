"""Lean dispatch: a node receives (and a worker is sent) only the fields it reads."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import cloudpickle
import pytest
from pydantic import BaseModel, field_validator
from structlog.testing import capture_logs

from engine import START, Graph, GraphError
from engine.lanes.frames import Decoded, decode, dumps_for_worker, request
from engine.lanes.pool import default_executor
from engine.lanes.worker import run_calls
from engine.lean import (
    Reads,
    StateView,
    estimate_payload,
    first_param_model,
    infer_reads,
    payload_size,
    payload_warnings,
    reads_by_node,
)
from engine.profile import DispatchCost, NodeProfile, Profile
from tests.support import State

# Worker processes cannot import the tests package: node functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Big(BaseModel):
    query: str = ""
    corpus: str = ""  # the 10 MB field
    hits: list[int] = []


class QueryView(BaseModel):
    """A smaller model: its fields are state fields, so they are the node's reads."""

    query: str = ""
    hits: list[int] = []


class LooseView(BaseModel):
    """Same names, different types: must be validated, not constructed."""

    hits: tuple[int, ...] = ()


class CheckedView(BaseModel):
    query: str = ""

    @field_validator("query")
    @classmethod
    def upper(cls, v: str) -> str:
        return v.upper()


class Doc(BaseModel):
    """A Send payload type: its fields are not state fields."""

    url: str
    text: str = ""


def by_view(s: QueryView) -> dict[str, Any]:
    return {"hits": [len(s.query)]}


def by_loose(s: LooseView) -> None:
    return None


def by_checked(s: CheckedView) -> None:
    return None


def by_doc(d: Doc) -> None:
    return None


def by_state(s: Big) -> None:
    return None


def unannotated(s):  # type: ignore[no-untyped-def]
    return None


def topic_length(view: Any) -> int:
    return len(view.query)


def big_state(mb: int = 10) -> Big:
    return Big(query="what is lean dispatch", corpus="x" * (mb << 20), hits=[1, 2, 3])


class TestInfer:
    def test_declared_reads_give_a_read_only_view(self) -> None:
        """reads=[...] sends a StateView of just those fields."""
        reads = infer_reads("n", unannotated, Big, ["query"])
        assert reads == Reads("n", ("query",), None, "declared")
        view = reads.project(big_state(1))
        assert isinstance(view, StateView) and view.query == "what is lean dispatch"
        assert view.model_dump() == {"query": "what is lean dispatch"}

    def test_reading_an_undeclared_field_says_how_to_fix_it(self) -> None:
        """An unread field is an AttributeError naming the node and the reads= fix."""
        view = infer_reads("rank", unannotated, Big, ["query"]).project(big_state(1))  # type: ignore[union-attr]
        with pytest.raises(AttributeError, match=r"node 'rank' declared reads=\['query'\]"):
            _ = view.corpus
        with pytest.raises(AttributeError, match="read-only"):
            view.query = "changed"

    def test_smaller_model_annotation_is_the_reads(self) -> None:
        """A first parameter annotated with a smaller model reads that model's fields."""
        reads = infer_reads("n", by_view, Big)
        assert reads is not None and reads.fields == ("query", "hits")
        assert reads.source == "annotation" and reads.model is QueryView and reads.construct
        arg = reads.project(big_state(1))
        assert type(arg) is QueryView and arg.hits == [1, 2, 3]

    def test_different_types_are_validated(self) -> None:
        """A view whose field types differ from the state's is built by validation."""
        reads = infer_reads("n", by_loose, Big)
        assert reads is not None and not reads.construct
        assert reads.project(big_state(1)).hits == (1, 2, 3)

    def test_view_validators_run(self) -> None:
        """A view with validators is validated, so they run."""
        reads = infer_reads("n", by_checked, Big)
        assert reads is not None and not reads.construct
        assert reads.project(big_state(1)).query == "WHAT IS LEAN DISPATCH"

    @pytest.mark.parametrize("fn", [by_doc, by_state, unannotated])
    def test_whole_state_or_send_payload_is_left_alone(self, fn: Any) -> None:
        """The state itself, no annotation, or a Send payload model: no projection."""
        assert infer_reads("n", fn, Big) is None

    def test_declared_reads_must_cover_the_annotated_model(self) -> None:
        """reads= that leaves out a field of the node's model is a GraphError with the fix."""
        with pytest.raises(GraphError, match=r"leaves out \['hits'\]"):
            infer_reads("n", by_view, Big, ["query"])

    def test_unknown_declared_field(self) -> None:
        """reads= naming a field the state lacks is a GraphError listing the fields."""
        with pytest.raises(GraphError, match=r"reads= names fields \['nope'\]"):
            infer_reads("n", unannotated, Big, ["nope"])

    def test_partial_and_string_annotations_resolve(self) -> None:
        """Annotations written as strings (from __future__) and partials are understood."""
        import functools

        def two(k: int, s: QueryView) -> None:
            return None

        assert first_param_model(functools.partial(two, 1)) is QueryView
        assert first_param_model(by_view) is QueryView

    def test_reads_from_the_graph(self) -> None:
        """reads_by_node covers add_node(reads=...) and annotations of a built graph."""
        g = Graph(Big)
        g.add_node("declared", unannotated, reads=["query"])
        g.add_node("annotated", by_view)
        g.add_node("whole", by_state)
        for n in ("declared", "annotated", "whole"):
            g.add_edge(START, n)
        reads = reads_by_node(g.nodes.values(), Big)
        assert set(reads) == {"declared", "annotated"}
        assert reads["declared"].describe() == "reads ['query'] (declared, as a read-only view)"


class TestProjection:
    def test_payload_follows_the_fields_read_not_the_state(self) -> None:
        """With a 10 MB state, the projected input of a one-field reader pickles to < 1 KB."""
        state = big_state(10)
        lean = infer_reads("n", unannotated, Big, ["query"]).project(state)  # type: ignore[union-attr]
        assert payload_size(state) > 10 << 20
        assert payload_size(lean) < 1024

    def test_copy_values_gives_a_private_copy(self) -> None:
        """In-process calls get copies: mutating the input cannot touch the state."""
        state = big_state(1)
        reads = infer_reads("n", by_view, Big)
        assert reads is not None
        arg = reads.project(state, copy_values=True)
        arg.hits.append(99)
        assert state.hits == [1, 2, 3]

    async def test_view_crosses_a_real_process_boundary(self) -> None:
        """A StateView is sent to a worker the way the cpu lane sends inputs, and read there."""
        view = infer_reads("n", unannotated, Big, ["query"]).project(big_state(10))  # type: ignore[union-attr]
        outcome = await round_trip(default_executor(), cloudpickle.dumps(topic_length), view)
        assert outcome.measured.ok and outcome.measured.value == len("what is lean dispatch")
        assert outcome.bytes_in < 4096

    async def test_lean_dispatch_costs_about_the_same_as_a_tiny_state(self) -> None:
        """Dispatch from a 10 MB state reading one field is within 1.2x of a tiny state."""
        reads = infer_reads("n", unannotated, Big, ["query"])
        assert reads is not None
        fn_bytes = cloudpickle.dumps(topic_length)
        pool = default_executor()

        async def dispatch(state: Big) -> float:
            t0 = time.perf_counter()
            await round_trip(pool, fn_bytes, reads.project(state))
            return time.perf_counter() - t0

        big, tiny = big_state(10), Big(query="what is lean dispatch")
        for _ in range(10):  # warm every worker
            await dispatch(tiny)
        ratios = []
        for _ in range(3):  # the median of medians resists a noisy neighbour
            b = statistics.median([await dispatch(big) for _ in range(25)])
            t = statistics.median([await dispatch(tiny) for _ in range(25)])
            ratios.append(b / t)
        assert statistics.median(ratios) <= 1.2, ratios

        full = time.perf_counter()
        await round_trip(pool, fn_bytes, StateView("n", {"query": big}))
        full = time.perf_counter() - full
        assert full > 3 * t  # without projection the big state is the cost


async def round_trip(pool: Any, fn_bytes: bytes, arg: Any) -> Decoded:
    """One call to a worker in the cpu lane's own wire format (``run_calls``)."""
    payload = request(fn_bytes, None, [dumps_for_worker(arg)])
    data = await asyncio.get_running_loop().run_in_executor(pool, run_calls, payload)
    (one,) = decode(data)
    assert one.unloadable is None, one.unloadable
    return one


class TestPayloadWarning:
    def dispatch(self) -> DispatchCost:
        return DispatchCost(fixed_s=0.0004, per_byte_s=1e-9, samples=5, workers=2, measured_at=0)

    def test_costs_more_to_send_than_to_compute(self) -> None:
        """A cpu node moving 10 MB to compute for 1 ms is flagged, with the numbers and the fix."""
        prof = NodeProfile("score", calls=3, wall_s=0.001, bytes_in=10e6, bytes_out=200.0)
        est = estimate_payload("score", prof, self.dispatch())
        assert est is not None and est.costs_more_to_send
        assert est.send_s == pytest.approx(0.0004 + 10.0002e6 * 1e-9)
        assert "reads=[...]" in est.message() and "9.5 MB" in est.message()

    def test_compile_time_warning_is_logged_only_when_it_matters(self) -> None:
        """payload_warnings logs the expensive cpu node and leaves the worthwhile one alone."""
        profile = Profile()
        profile.observe_dispatch(self.dispatch())
        from engine import NodeCall

        calls = [
            NodeCall("score", 0, "cpu", 1, 2, 1, "h", 0.0, 0.001, 0.001, 10_000_000, 200),
            NodeCall("train", 0, "cpu", 1, 2, 1, "h", 0.0, 2.0, 2.0, 10_000_000, 200),
        ]
        profile.observe_run(calls, driver_pid=1)
        with capture_logs() as logs:
            flagged = payload_warnings(["score", "train", "unmeasured"], profile)
        assert [e.node for e in flagged] == ["score"]
        (event,) = [e for e in logs if e["event"] == "payload_costs_more_than_compute"]
        assert event["node"] == "score" and event["log_level"] == "warning"

    def test_no_estimate_without_measurements(self) -> None:
        """Without a measured payload or dispatch cost there is nothing to warn about."""
        assert estimate_payload("x", NodeProfile("x", calls=1, wall_s=0.1), self.dispatch()) is None
        assert (
            estimate_payload("x", NodeProfile("x", calls=1, wall_s=0.1, bytes_in=5.0), None) is None
        )


def test_state_view_equality_and_pickle() -> None:
    """A view compares by its fields and survives pickling (what a worker receives)."""
    v = StateView("n", {"a": 1})
    assert cloudpickle.loads(cloudpickle.dumps(v)) == v and v != StateView("n", {"a": 2})
    assert repr(v) == "StateView(node='n', fields=['a'])"


def test_node_annotated_with_the_state_takes_it_whole() -> None:
    """A node annotated with the state model itself receives the whole state."""

    def whole(s: State) -> None:
        return None

    assert infer_reads("n", whole, State) is None
