"""A run between two steps <-> a :class:`Checkpoint`, through the value codec.

::

    scheduler cursor --save()--> Checkpoint (JSON data) --backend--> JSON text
    JSON text --backend--> Checkpoint --load()--> the pieces of a cursor

``save`` writes the state from ``model_dump(mode="python")`` with the codec
(``codec.py``), reads it back and validates it, and refuses the checkpoint
when that round trip would not give the very same state (or the same pending
write, or the same ``Send`` payload): a :class:`CheckpointError` naming the
step, the field and the node that wrote it, raised before the backend
replaces anything. ``load`` decodes and validates what ``save`` wrote.

Both directions check the checkpoint against the graph's :class:`Topology`: a
save that would name a task the graph cannot run, and a stored checkpoint
whose tasks, fan-in bookkeeping or pending writes name what the graph does
not have, are a :class:`CheckpointError`, never a resume that runs or merges
them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from ..errors import CheckpointError
from ..state import StateSchema
from . import codec
from .base import Checkpoint, PendingWrite, TaskRef

#: One step's writes: (node, Send index) -> the updates that node call returned.
Writes = Mapping[tuple[str, int], Mapping[str, Any]]

#: What a checkpoint can hold, said once for every refusal.
_KEEPABLE = (
    "JSON types, tuples, sets, bytes, datetimes, Decimals, UUIDs, or models and enums of a "
    "declared field type"
)


class TaskLike(Protocol):
    """A task to run in a step, as the scheduler holds it."""

    @property
    def node(self) -> str: ...
    @property
    def index(self) -> int: ...
    @property
    def payload(self) -> Any: ...
    @property
    def has_payload(self) -> bool: ...


@dataclass(frozen=True)
class SavedTask:
    """A task read back from a checkpoint."""

    node: str
    index: int
    payload: Any
    has_payload: bool


@dataclass(frozen=True)
class Topology:
    """What of a graph a checkpoint may name: its nodes, its fan-in edges (key -> sources)."""

    nodes: frozenset[str]
    fanins: Mapping[str, frozenset[str]]


@dataclass(frozen=True)
class Restored:
    """A checkpoint read back: what the scheduler's cursor is made of."""

    state: BaseModel
    step: int
    tasks: list[SavedTask]
    fanin: dict[str, set[str]]
    pending: dict[tuple[str, int], Mapping[str, Any]]


@dataclass(frozen=True)
class RunCodec:
    """Saves and loads one graph's runs: its state schema, and what it can run."""

    schema: StateSchema
    topology: Topology

    # -- save --------------------------------------------------------------------

    def save(
        self,
        *,
        thread_id: str,
        run_id: str,
        step: int,
        state: BaseModel,
        tasks: Iterable[TaskLike],
        fanin: Mapping[str, Iterable[str]],
        pending: Writes,
        status: str,
        started_at: float | None,
        written: Writes | None = None,
    ) -> Checkpoint:
        """The checkpoint of ``state`` before step ``step``, or a CheckpointError.

        ``written`` is the previous step's writes (which made ``state``): a
        field that cannot be saved is blamed on the node(s) that wrote it.
        """
        where = f"cannot save step {step} of thread {thread_id!r}"
        blame = _Blame(step - 1, written)
        data = self._model(state, where, lambda f: f"state field {f!r}{blame.of(f)}")
        refs = [self._task(t, where) for t in tasks]
        writes = [
            self._write(node, index, updates, step, where)
            for (node, index), updates in sorted(pending.items())
        ]
        cp = Checkpoint(
            thread_id=thread_id,
            run_id=run_id,
            step=step,
            state=data,
            next_tasks=refs,
            fanin={k: sorted(v) for k, v in fanin.items()},
            pending_writes=writes,
            status=status,  # type: ignore[arg-type]
            created_at=time.time(),
            run_started_at=started_at,
        )
        problem = self._problem(cp)
        if problem is not None:
            raise CheckpointError(
                f"{where}: the checkpoint {problem}, which no resume could run. This is a bug "
                "of the engine, please report it; nothing was saved, the thread's previous "
                "checkpoint is kept"
            )
        return cp

    def _model(self, value: BaseModel, where: str, what: Callable[[str], str]) -> dict[str, Any]:
        """A state instance as JSON data, checked to validate back into the same instance.

        Fields whose type the schema vouches for (``StateSchema.unsure``) and
        whose value the codec wrote exactly are not read back: their round
        trip is exact by construction. The rest are decoded, validated and
        compared strictly with what was saved.
        """
        model = type(value)
        try:
            dump = value.model_dump(mode="python")
        except Exception as exc:
            raise CheckpointError(
                f"{where}: {model.__name__}.model_dump(mode='python') failed: "
                f"{type(exc).__name__}: {exc}; fix the model's serializers"
            ) from exc
        data: dict[str, Any] = {}
        check: set[str] = set()
        for name, v in dump.items():
            try:
                enc = codec.encode(v, name)
            except codec.CodecError as exc:
                raise self._refusal(where, what(name), str(exc)) from exc
            data[name] = enc.data
            if not enc.exact:
                check.add(name)
        unsure = self.schema.unsure
        if model is not self.schema.model or unsure.whole:
            try:
                back = self.schema.model.model_validate(codec.decode(data))
            except ValidationError as exc:
                first = exc.errors()[0]
                name = str(first["loc"][0]) if first["loc"] else "?"
                raise self._refusal(
                    where,
                    what(name),
                    f"does not validate back into {self.schema.model.__name__}: {first['msg']}",
                ) from exc
            restored = {name: _field(back, name) for name in dump}
            check = set(dump)
        else:
            check |= unsure.fields & set(dump)
            restored = {}
            for name in sorted(check):
                try:
                    adapter = self.schema.field_adapter(name)
                    restored[name] = adapter.validate_python(codec.decode(data[name]))
                except ValidationError as exc:
                    raise self._refusal(
                        where,
                        what(name),
                        f"does not validate back into the field's type: {exc.errors()[0]['msg']}",
                    ) from exc
        for name in dump:
            if name in check:
                diff = codec.difference(_field(value, name), restored[name], name)
                if diff is not None:
                    raise self._refusal(where, what(name), f"would come back changed: {diff}")
        return data

    def _task(self, task: TaskLike, where: str) -> TaskRef:
        if not task.has_payload:
            return TaskRef(node=task.node, index=task.index)
        what = f"the payload of Send {task.index} to node {task.node!r}"
        if isinstance(task.payload, self.schema.model):
            data = self._model(task.payload, where, lambda f: f"{what}, field {f!r},")
            return TaskRef(node=task.node, index=task.index, payload=data, payload_kind="state")
        try:
            enc = codec.encode(task.payload, "payload")
        except codec.CodecError as exc:
            raise self._refusal(where, what, str(exc)) from exc
        if not enc.exact:
            raise self._refusal(
                where,
                what,
                f"holds a {enc.inexact_type} at {enc.inexact_at}, which "
                "would come back as plain data (a Send payload has no declared type to "
                "rebuild it with)",
                fix="send a dict of JSON types, tuples, sets, bytes, datetimes, Decimals or "
                "UUIDs, or an instance of the state model",
            )
        return TaskRef(node=task.node, index=task.index, payload=enc.data, payload_kind="json")

    def _write(
        self, node: str, index: int, updates: Mapping[str, Any], step: int, where: str
    ) -> PendingWrite:
        who = f"node {node!r}" + (f" (Send {index})" if index >= 0 else "")
        data: dict[str, Any] = {}
        typed: list[str] = []
        for key, value in updates.items():
            what = f"the write of {who} in step {step} to field {key!r}"
            try:
                enc = codec.encode(value, key)
            except codec.CodecError as exc:
                raise self._refusal(where, what, str(exc)) from exc
            if not enc.exact:
                # Plain data there: only the field's type can rebuild it on load.
                try:
                    back = self.schema.field_adapter(key).validate_python(codec.decode(enc.data))
                except ValidationError as exc:
                    raise self._refusal(
                        where,
                        what,
                        f"holds a {enc.inexact_type} at {enc.inexact_at}, "
                        f"which does not validate back into the field's type: "
                        f"{exc.errors()[0]['msg']}",
                    ) from exc
                diff = codec.difference(value, back, key)
                if diff is not None:
                    raise self._refusal(where, what, f"would come back changed: {diff}")
                typed.append(key)
            data[key] = enc.data
        return PendingWrite(node=node, index=index, updates=data, typed=typed)

    @staticmethod
    def _refusal(where: str, what: str, why: str, fix: str = "") -> CheckpointError:
        fix = fix or (f"keep to {_KEEPABLE} (declare the field with the value's own type, not Any)")
        return CheckpointError(
            f"{where}: {what} {why}; {fix}. Nothing was saved: the thread's previous "
            "checkpoint is kept"
        )

    # -- load --------------------------------------------------------------------

    def load(self, cp: Checkpoint) -> Restored:
        """What ``cp`` describes, validated; raises CheckpointError naming thread and step."""
        where = f"checkpoint of thread {cp.thread_id!r} at step {cp.step}"
        problem = self._problem(cp)
        if problem is not None:
            raise CheckpointError(
                f"{where} {problem}, which this graph cannot resume: it was saved by another "
                "graph, or altered. Resume it with the graph that saved it, or abandon the "
                f"thread with checkpointer.delete_thread({cp.thread_id!r})"
            )
        # Version 1 stored plain JSON (no tags): read it as it was written.
        read = codec.decode if cp.schema_version >= 2 else (lambda data: data)
        model = self.schema.model
        try:
            state = model.model_validate(read(cp.state))
            tasks = []
            for ref in cp.next_tasks:
                payload: Any = None
                if ref.payload_kind == "state":
                    payload = model.model_validate(read(ref.payload))
                elif ref.payload_kind == "json":
                    payload = read(ref.payload)
                tasks.append(SavedTask(ref.node, ref.index, payload, ref.payload_kind != "none"))
            pending: dict[tuple[str, int], Mapping[str, Any]] = {}
            if cp.status in ("failed", "interrupted"):
                for w in cp.pending_writes:
                    updates = dict(self.schema.check_update(w.node, cp.step, read(w.updates)))
                    for key in w.typed:
                        if key not in updates:
                            raise ValueError(f"typed field {key!r} is not in the write")
                        updates[key] = self.schema.field_adapter(key).validate_python(updates[key])
                    pending[(w.node, w.index)] = updates
        except Exception as exc:
            raise CheckpointError(
                f"{where} does not fit this graph: {type(exc).__name__}: {exc}; resume it with "
                "the graph (and state schema) that saved it, or abandon the thread with "
                f"checkpointer.delete_thread({cp.thread_id!r})"
            ) from exc
        return Restored(
            state=state,
            step=cp.step,
            tasks=sorted(tasks, key=lambda t: (t.node, t.index)),
            fanin={k: set(v) for k, v in cp.fanin.items()},
            pending=pending,
        )

    # -- both --------------------------------------------------------------------

    def _problem(self, cp: Checkpoint) -> str | None:
        """What in ``cp`` the graph cannot resume, or None."""
        nodes = self.topology.nodes
        known = f"(its nodes: {sorted(nodes)})"
        orders: set[tuple[str, int]] = set()
        for ref in cp.next_tasks:
            if ref.node not in nodes:
                return f"names task {ref.node!r}, a node the graph does not have {known}"
            sent = ref.payload_kind != "none"
            if (ref.index >= 0) != sent or ref.index < -1:
                return (
                    f"has a malformed task: node {ref.node!r}, index {ref.index}, "
                    f"payload {ref.payload_kind}"
                )
            if (ref.node, ref.index) in orders:
                return f"names task ({ref.node!r}, {ref.index}) twice"
            orders.add((ref.node, ref.index))
        for key, sources in cp.fanin.items():
            edge = self.topology.fanins.get(key)
            if edge is None:
                return (
                    f"counts sources of fan-in edge {key!r}, an edge the graph does not have "
                    f"(its fan-ins: {sorted(self.topology.fanins)})"
                )
            stray = sorted(set(sources) - edge)
            if stray:
                return f"counts {stray} as sources of fan-in edge {key!r}, which they are not"
        for w in cp.pending_writes:
            if w.node not in nodes:
                return (
                    f"holds a pending write of node {w.node!r}, a node the graph does not have "
                    f"{known}"
                )
            if (w.node, w.index) not in orders:
                send = f" (Send {w.index})" if w.index >= 0 else ""
                return (
                    f"holds a pending write of node {w.node!r}{send}, which is no task of its step"
                )
        return None


class _Blame:
    """Who wrote a field in the step that made a state, for a refusal's message."""

    def __init__(self, step: int, written: Writes | None) -> None:
        self.step = step
        self.written = written

    def of(self, name: str) -> str:
        if self.written is None:
            return ""
        who = [
            f"{node!r}" + (f" (Send {index})" if index >= 0 else "")
            for (node, index), updates in sorted(self.written.items())
            if name in updates
        ]
        if not who:
            return f" (not written in step {self.step}: it came from the input or an earlier step)"
        return f" (written by node {', '.join(who)} in step {self.step})"


def _field(model: BaseModel, name: str) -> Any:
    if name in type(model).model_fields:
        return getattr(model, name)
    return (model.__pydantic_extra__ or {}).get(name)
