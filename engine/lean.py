"""Lean dispatch: a node receives only the state fields it reads.

::

    add_node("score", score, reads=["query"])      def score(s: Query) -> dict
            |  declared                                  |  first-parameter annotation:
            v                                            v  a smaller pydantic model
    Reads(fields=("query",), model=None)   Reads(fields=Query's fields, model=Query)
            \\___________________  _____________________/
                                \\/
    dispatcher, per call: arg = reads.project(state)   (a StateView or a Query)
            -> pickled for the cpu lane: bytes follow the fields read, not the state

The projection is applied on every lane, not only the cpu lane, so a node
sees the same input in all three modes (a node that reads an undeclared
field fails in ``sequential`` exactly as in ``parallel``). ``Send`` payloads
are sent as they are. At compile, ``payload_warnings`` flags cpu nodes whose
measured payload costs more to send than the call costs to compute.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import cloudpickle
from pydantic import BaseModel

from .errors import GraphError
from .fmt import fmt_bytes, fmt_seconds
from .logs import get_logger

if TYPE_CHECKING:
    from .measured import DispatchCost, NodeProfile
    from .profile import Profile

log = get_logger("engine.lean")


class StateView:
    """The state fields a node declared it reads, read-only, by attribute.

    Reading a field that was not declared raises an ``AttributeError`` that
    says how to fix it. ``model_dump()`` returns the fields as a dict.
    """

    __slots__ = ("_node", "_values")

    def __init__(self, node: str, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        values: dict[str, Any] = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        if name.startswith("__"):
            raise AttributeError(name)
        node = object.__getattribute__(self, "_node")
        raise AttributeError(
            f"node {node!r} declared reads={sorted(values)}, so its input has no field "
            f"{name!r}; add {name!r} to reads=[...] in add_node (or drop reads= to "
            "receive the whole state)"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        node = object.__getattribute__(self, "_node")
        raise AttributeError(
            f"node {node!r} cannot assign {name!r}: its input is read-only; return an "
            f"update instead, e.g. {{{name!r}: ...}}"
        )

    def model_dump(self) -> dict[str, Any]:
        return dict(object.__getattribute__(self, "_values"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StateView):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.model_dump())))

    def __repr__(self) -> str:
        node = object.__getattribute__(self, "_node")
        return f"StateView(node={node!r}, fields={sorted(self.model_dump())})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (StateView, (object.__getattribute__(self, "_node"), self.model_dump()))


@dataclass(frozen=True)
class Reads:
    """What one node reads of the state, and how its input is built."""

    node: str
    fields: tuple[str, ...]
    model: type[BaseModel] | None  # the smaller model it annotates; None: a StateView
    source: Literal["declared", "annotation", "schema", "state"]
    construct: bool = False  # build ``model`` without re-validating (same field types)
    #: A state held as channel values: the node's view of them (engine.state.View).
    view: Any = None

    def project(self, state: Any, *, copy_values: bool = False) -> Any:
        """The node's input from ``state`` (a model instance, or channel values, through
        ``view``): only ``fields``.

        ``copy_values`` deep-copies the values read, for calls that run in this
        process (a worker gets its own copy by unpickling).
        """
        if self.view is not None:
            return self.view(state, copy_values=copy_values)
        values = {f: getattr(state, f) for f in self.fields}
        if copy_values:
            values = copy.deepcopy(values)
        if self.model is None:
            return StateView(self.node, values)
        if self.construct:
            return self.model.model_construct(**values)
        return self.model.model_validate(values)

    def describe(self) -> str:
        how = f"as {self.model.__name__}" if self.model is not None else "as a read-only view"
        return f"reads {list(self.fields)} ({self.source}, {how})"


def first_param_model(fn: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model annotating ``fn``'s first parameter, if it has one."""
    try:
        sig = inspect.signature(fn, eval_str=True)
    except (TypeError, ValueError, NameError, SyntaxError):
        return None
    params = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params:
        return None
    ann = params[0].annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return None


def infer_reads(
    node: str,
    fn: Callable[..., Any],
    state: type[BaseModel],
    declared: Sequence[str] | None = None,
) -> Reads | None:
    """The reads of a node: declared with ``reads=``, or its first parameter's smaller model.

    Returns None when the node takes the whole state. A model annotation
    whose fields are not all state fields is taken as a ``Send`` payload
    type, not a view of the state, and left alone.
    """
    state_fields = set(state.model_fields)
    model = first_param_model(fn)
    smaller: type[BaseModel] | None = None
    if (
        model is not None
        and model is not state
        and not issubclass(model, state)
        and set(model.model_fields) < state_fields
    ):
        smaller = model
    if declared is not None:
        unknown = [f for f in declared if f not in state_fields]
        if unknown:
            raise GraphError(
                f"node {node!r}: reads= names fields {unknown} that {state.__name__} does not "
                f"have (fields: {sorted(state_fields)})"
            )
        wanted = tuple(dict.fromkeys(declared))
        if smaller is not None:
            missing = [f for f in smaller.model_fields if f not in wanted]
            if missing:
                raise GraphError(
                    f"node {node!r} takes {smaller.__name__} (fields "
                    f"{list(smaller.model_fields)}) but reads= leaves out {missing}; add them "
                    "to reads=, or drop reads= (the annotation alone is enough)"
                )
            fields = tuple(smaller.model_fields)
            return Reads(node, fields, smaller, "declared", _same_types(smaller, state))
        return Reads(node, wanted, None, "declared")
    if smaller is not None:
        return Reads(
            node, tuple(smaller.model_fields), smaller, "annotation", _same_types(smaller, state)
        )
    return None


def _same_types(view: type[BaseModel], state: type[BaseModel]) -> bool:
    """True when ``view`` can be built from state values without re-validation."""
    decorators = view.__pydantic_decorators__
    if decorators.field_validators or decorators.model_validators or decorators.validators:
        return False
    return all(
        view.model_fields[f].annotation == state.model_fields[f].annotation
        for f in view.model_fields
    )


def reads_by_node(specs: Iterable[Any], state: type[BaseModel]) -> dict[str, Reads]:
    """``Reads`` for every node spec (``engine.graph.NodeSpec``) that reads less than all."""
    out: dict[str, Reads] = {}
    for spec in specs:
        reads = infer_reads(spec.name, spec.fn, state, spec.reads)
        if reads is not None:
            out[spec.name] = reads
    return out


# -- payload estimates -------------------------------------------------------------


def payload_size(obj: Any) -> int:
    """Bytes ``obj`` takes pickled, as the cpu lane would send it."""
    return len(cloudpickle.dumps(obj))


@dataclass(frozen=True)
class PayloadEstimate:
    """A cpu node's measured payload against its measured compute time."""

    node: str
    bytes_in: float
    bytes_out: float
    send_s: float
    compute_s: float

    @property
    def costs_more_to_send(self) -> bool:
        return self.send_s > self.compute_s

    def message(self) -> str:

        return (
            f"node {self.node!r} sends {fmt_bytes(self.bytes_in)} in and "
            f"{fmt_bytes(self.bytes_out)} out per call ({fmt_seconds(self.send_s)} to dispatch) "
            f"to compute for {fmt_seconds(self.compute_s)}; declare reads=[...] (or annotate "
            "a smaller model) so it receives only what it uses, or give it lane='thread'"
        )


def estimate_payload(
    node: str, prof: NodeProfile | None, dispatch: DispatchCost | None
) -> PayloadEstimate | None:
    """The estimate for one node, or None without a measured payload and dispatch cost."""
    if prof is None or dispatch is None or prof.wall_s is None or prof.payload_bytes is None:
        return None
    b_in, b_out = prof.bytes_in or 0.0, prof.bytes_out or 0.0
    return PayloadEstimate(node, b_in, b_out, dispatch.cost(b_in + b_out), prof.wall_s)


def payload_warnings(cpu_nodes: Iterable[str], profile: Profile) -> list[PayloadEstimate]:
    """At compile: cpu nodes whose payload costs more to send than to compute (logged)."""
    dispatch = profile.dispatch
    out: list[PayloadEstimate] = []
    for node in sorted(cpu_nodes):
        est = estimate_payload(node, profile.get(node), dispatch)
        if est is not None and est.costs_more_to_send:
            out.append(est)
            log.warning(
                "payload_costs_more_than_compute",
                node=node,
                bytes_in=int(est.bytes_in),
                bytes_out=int(est.bytes_out),
                send_ms=round(est.send_s * 1e3, 3),
                compute_ms=round(est.compute_s * 1e3, 3),
                hint=est.message(),
            )
    return out


__all__ = [
    "PayloadEstimate",
    "Reads",
    "StateView",
    "estimate_payload",
    "first_param_model",
    "infer_reads",
    "payload_size",
    "payload_warnings",
    "reads_by_node",
]
