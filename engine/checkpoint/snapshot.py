"""A run between two steps <-> a :class:`Checkpoint`, through the value codec.

::

    scheduler cursor --save()--> Checkpoint (JSON data) --backend--> JSON text
    JSON text --backend--> Checkpoint --load()--> the pieces of a cursor

The state is held one of two ways (``RunCodec.held``): as channel values (a
dict, ``StateSchema``'s representation for every kind of state), or as a
pydantic model instance (how the scheduler holds a pydantic state today).

``save`` writes every value with the codec (``codec.py``) and refuses the
checkpoint when a value would not come back as the very same value: a
:class:`CheckpointError` naming the step, the field and the node that wrote
it, raised before the backend replaces anything. A value the codec writes
exactly needs no checking; one it writes as plain data (an enum member, a
nested model) is validated back into its channel's declared type and
compared, and marked ``typed`` so that ``load`` rebuilds it the same way.

Both directions check the checkpoint against the graph's :class:`Topology`: a
save that would name a task the graph cannot run, and a stored checkpoint
whose tasks, fan-in bookkeeping or pending writes name what the graph does
not have, are a :class:`CheckpointError`, never a resume that runs or merges
them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ValidationError

from ..errors import CheckpointError
from ..interrupts import Asked, Interrupt
from ..spec import START, Send
from ..state import StateSchema, Values
from .base import Checkpoint, PendingWrite, Source, TaskError, TaskInterrupt, TaskRef, TaskResume
from .codec import CodecError, difference
from .codec import decode as decode_value
from .codec import encode as encode_value

#: One step's writes: (node, Send index) -> the updates that node call returned.
Writes = Mapping[tuple[str, int], Mapping[str, Any]]
#: The gotos of a step's tasks that returned ``Command(goto=...)``: node names and Sends.
Gotos = Mapping[tuple[str, int], Sequence[str | Send]]

#: What a checkpoint can hold, said once for every refusal.
_KEEPABLE = (
    "JSON types, tuples, sets, bytes, datetimes, Decimals, UUIDs, chat messages, or models "
    "and enums of a declared field type"
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
    """A checkpoint read back: what the scheduler's cursor is made of.

    ``state`` is a dict of channel values, or a model instance when the
    codec holds states as models.
    """

    state: Any
    step: int
    tasks: list[SavedTask]
    fanin: dict[str, set[str]]
    pending: dict[tuple[str, int], Mapping[str, Any]]
    #: Questions the step's tasks asked, still open; answers they were given so far.
    asked: list[Asked] = dataclasses.field(default_factory=list)
    resumes: dict[tuple[str, int], tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    #: The gotos of the tasks whose writes are ``pending`` (routing's input with the step's).
    gotos: dict[tuple[str, int], tuple[str | Send, ...]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Encoded:
    """Values as JSON data, and which of them only their declared type rebuilds."""

    data: dict[str, Any]
    typed: list[str]


@dataclass(frozen=True)
class RunCodec:
    """Saves and loads one graph's runs: its state schema, and what it can run."""

    schema: StateSchema
    topology: Topology
    held: Literal["values", "model"] = "model"

    # -- save --------------------------------------------------------------------

    def save(
        self,
        *,
        thread_id: str,
        run_id: str,
        step: int,
        state: Any,
        tasks: Iterable[TaskLike],
        fanin: Mapping[str, Iterable[str]],
        pending: Writes,
        status: str,
        started_at: float | None,
        written: Writes | None = None,
        source: Source = "loop",
        checkpoint_ns: str = "",
        checkpoint_id: str = "",
        parent_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        errors: Mapping[tuple[str, int], BaseException | str] | None = None,
        writers: Iterable[str] | None = None,
        asked: Iterable[Asked] = (),
        resumes: Mapping[tuple[str, int], Iterable[Any]] | None = None,
        paused: bool = False,
        gotos: Gotos | None = None,
    ) -> Checkpoint:
        """The checkpoint of ``state`` before step ``step``, or a CheckpointError.

        ``written`` is the writes that made ``state`` (the previous step's,
        or the input's as ``__start__``): a field that cannot be saved is
        blamed on the node(s) that wrote it, and a ``loop`` checkpoint hands
        them to its store as its parent's task writes. ``errors`` are the
        step's failed tasks (their ``repr`` is kept); ``writers`` default to
        the nodes of ``written``. ``gotos``: the ``Command(goto=...)`` targets of
        tasks with a pending write, kept with it. ``checkpoint_id``/``parent_id``: see
        ``Checkpointer.put``.
        """
        where = f"cannot save step {step} of thread {thread_id!r}"
        blame = _Blame(step - 1, written)

        def what(name: str) -> str:
            return f"state field {name!r}{blame.of(name)}"

        if self.held == "model":
            data, typed = self._model(state, where, what), []
        else:
            enc = self._values(state, where, what)
            data, typed = enc.data, enc.typed
        refs = [self._task(t, where) for t in tasks]
        writes = [
            self._write(node, index, updates, step, where, (gotos or {}).get((node, index), ()))
            for (node, index), updates in sorted(pending.items())
        ]
        made_by: list[PendingWrite] = []
        if written is not None and source == "loop":
            made_by = [
                self._write(node, index, updates, step - 1, where)
                for (node, index), updates in sorted(written.items())
            ]
        if writers is None:
            writers = sorted({node for node, _ in written}) if written else []
        meta = self._metadata(metadata, where)
        cp = Checkpoint(
            thread_id=thread_id,
            checkpoint_ns=checkpoint_ns,
            checkpoint_id=checkpoint_id,
            parent_id=parent_id,
            run_id=run_id,
            step=step,
            source=source,
            state=data,
            typed=typed,
            next_tasks=refs,
            fanin={k: sorted(v) for k, v in fanin.items()},
            pending_writes=writes,
            parent_writes=made_by,
            writers=list(writers),
            errors=[
                TaskError(node=node, index=index, error=e if isinstance(e, str) else repr(e))
                for (node, index), e in sorted((errors or {}).items())
            ],
            interrupts=[
                TaskInterrupt(
                    node=a.node,
                    index=a.index,
                    n=a.n,
                    id=a.interrupt.id,
                    value=self._exact(
                        a.interrupt.value, where, f"the interrupt() value of node {a.node!r}"
                    ),
                )
                for a in asked
            ],
            resumes=[
                TaskResume(
                    node=node,
                    index=index,
                    values=[
                        self._exact(v, where, f"an answer to node {node!r}'s interrupt()")
                        for v in values
                    ],
                )
                for (node, index), values in sorted((resumes or {}).items())
            ],
            status=status,  # type: ignore[arg-type]
            paused=paused,
            created_at=time.time(),
            run_started_at=started_at,
            metadata=meta,
        )
        problem = self._problem(cp)
        if problem is not None:
            raise CheckpointError(
                f"{where}: the checkpoint {problem}, which no resume could run. This is a bug "
                "of the engine, please report it; nothing was saved, the thread's previous "
                "checkpoint is kept"
            )
        return cp

    def _metadata(self, metadata: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
        if not metadata:
            return {}
        try:
            enc = encode_value(dict(metadata), "metadata")
        except CodecError as exc:
            raise self._refusal(where, "the run's metadata", str(exc)) from exc
        if not enc.exact:
            raise self._refusal(
                where,
                "the run's metadata",
                f"holds a {enc.inexact_type} at {enc.inexact_at}, which would come back as "
                "plain data",
                fix="keep config['metadata'] to JSON types",
            )
        assert isinstance(enc.data, dict)
        return enc.data

    def _values(self, values: Values, where: str, what: Callable[[str], str]) -> Encoded:
        """Channel values as JSON data, each checked to come back as it is."""
        if not isinstance(values, dict):
            raise TypeError(f"a codec holding values saves a dict, got {type(values).__name__}")
        return self._fields(values, where, what)

    def _fields(self, values: Mapping[str, Any], where: str, what: Callable[[str], str]) -> Encoded:
        """Values of channels as JSON data; one without an exact form must be rebuilt exactly
        by validating it into its channel's declared type (it is then ``typed``)."""
        data: dict[str, Any] = {}
        typed: list[str] = []
        for key, value in values.items():
            try:
                enc = encode_value(value, key)
            except CodecError as exc:
                raise self._refusal(where, what(key), str(exc)) from exc
            if not enc.exact:
                adapter = self.schema.adapter(key) if key in self.schema.channels else None
                if adapter is None:
                    raise self._refusal(
                        where,
                        what(key),
                        f"holds a {enc.inexact_type} at {enc.inexact_at}, which would come "
                        "back as plain data (its declared type cannot rebuild it)",
                    )
                try:
                    back = adapter.validate_python(decode_value(enc.data))
                except ValidationError as exc:
                    raise self._refusal(
                        where,
                        what(key),
                        f"holds a {enc.inexact_type} at {enc.inexact_at}, which does not "
                        f"validate back into the field's type: {exc.errors()[0]['msg']}",
                    ) from exc
                diff = difference(value, back, key)
                if diff is not None:
                    raise self._refusal(where, what(key), f"would come back changed: {diff}")
                typed.append(key)
            data[key] = enc.data
        return Encoded(data, typed)

    def _model(self, value: BaseModel, where: str, what: Callable[[str], str]) -> dict[str, Any]:
        """A model instance as JSON data, checked to validate back into the same instance.

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
                enc = encode_value(v, name)
            except CodecError as exc:
                raise self._refusal(where, what(name), str(exc)) from exc
            data[name] = enc.data
            if not enc.exact:
                check.add(name)
        own = self.schema.kind == "pydantic" and model is self.schema.state
        if not own or self.schema.unsure.whole:
            try:
                back = model.model_validate(decode_value(data))
            except ValidationError as exc:
                first = exc.errors()[0]
                name = str(first["loc"][0]) if first["loc"] else "?"
                raise self._refusal(
                    where,
                    what(name),
                    f"does not validate back into {model.__name__}: {first['msg']}",
                ) from exc
            restored = {name: _field(back, name) for name in dump}
            check = set(dump)
        else:
            check |= self.schema.unsure.fields & set(dump)
            restored = {}
            for name in sorted(check):
                try:
                    adapter = self.schema.field_adapter(name)
                    restored[name] = adapter.validate_python(decode_value(data[name]))
                except ValidationError as exc:
                    raise self._refusal(
                        where,
                        what(name),
                        f"does not validate back into the field's type: {exc.errors()[0]['msg']}",
                    ) from exc
        for name in dump:
            if name in check:
                diff = difference(_field(value, name), restored[name], name)
                if diff is not None:
                    raise self._refusal(where, what(name), f"would come back changed: {diff}")
        return data

    def _task(self, task: TaskLike, where: str) -> TaskRef:
        if not task.has_payload:
            return TaskRef(node=task.node, index=task.index)
        what = f"the payload of Send {task.index} to node {task.node!r}"
        if task.node == START:
            what = "the run's input"
        payload: Any = task.payload
        for name, cls in self.schema.classes.items():
            if type(payload) is not cls:
                continue
            schema = "" if cls is self.schema.state else name
            if isinstance(payload, BaseModel):
                data = self._model(payload, where, lambda f: f"{what}, field {f!r},")
            else:
                data = self._exact(_init_fields(payload), where, what)
            return TaskRef(
                node=task.node,
                index=task.index,
                payload=data,
                payload_kind="state",
                payload_schema=schema,
            )
        return TaskRef(
            node=task.node,
            index=task.index,
            payload=self._exact(payload, where, what),
            payload_kind="json",
        )

    def _exact(self, value: Any, where: str, what: str) -> Any:
        """JSON data that decodes to exactly ``value`` (nothing declares its type)."""
        try:
            enc = encode_value(value, "payload")
        except CodecError as exc:
            raise self._refusal(where, what, str(exc)) from exc
        if not enc.exact:
            raise self._refusal(
                where,
                what,
                f"holds a {enc.inexact_type} at {enc.inexact_at}, which "
                "would come back as plain data (a Send payload has no declared type to "
                "rebuild it with)",
                fix="send a dict of JSON types, tuples, sets, bytes, datetimes, Decimals, "
                "UUIDs or chat messages, or an instance of the state's (or a node's input's) "
                "class",
            )
        return enc.data

    def _write(
        self,
        node: str,
        index: int,
        updates: Mapping[str, Any],
        step: int,
        where: str,
        goto: Sequence[str | Send] = (),
    ) -> PendingWrite:
        who = f"node {node!r}" + (f" (Send {index})" if index >= 0 else "")
        enc = self._fields(
            updates, where, lambda key: f"the write of {who} in step {step} to field {key!r}"
        )
        refs = [
            TaskRef(node=target)
            if isinstance(target, str)
            else self._task(SavedTask(target.node, n, target.arg, True), where)
            for n, target in enumerate(goto)
        ]
        return PendingWrite(node=node, index=index, updates=enc.data, typed=enc.typed, goto=refs)

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
        try:
            state = self.load_state(cp)
            tasks = [self._saved_task(cp, ref) for ref in cp.next_tasks]
            pending: dict[tuple[str, int], Mapping[str, Any]] = {}
            gotos: dict[tuple[str, int], tuple[str | Send, ...]] = {}
            if cp.status in ("failed", "interrupted"):
                pending = self.load_writes(cp)
                gotos = self.load_gotos(cp)
            asked = self.load_asked(cp)
            resumes = {(r.node, r.index): tuple(self._reader(cp)(r.values)) for r in cp.resumes}
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
            asked=asked,
            resumes=resumes,
            gotos=gotos,
        )

    def load_gotos(self, cp: Checkpoint) -> dict[tuple[str, int], tuple[str | Send, ...]]:
        """The ``Command(goto=...)`` targets kept with ``cp``'s pending writes, by task
        (a goto to a node the graph lacks is routing's error on resume, as it would have been)"""
        out: dict[tuple[str, int], tuple[str | Send, ...]] = {}
        for w in cp.pending_writes:
            if w.goto:
                out[(w.node, w.index)] = tuple(self._goto(cp, ref) for ref in w.goto)
        return out

    def _goto(self, cp: Checkpoint, ref: TaskRef) -> str | Send:
        if ref.payload_kind == "none":
            return ref.node
        return Send(ref.node, self._saved_task(cp, ref).payload)

    def load_asked(self, cp: Checkpoint) -> list[Asked]:
        """The open questions of ``cp``'s step, as the scheduler keeps them."""
        read = self._reader(cp)
        return [
            Asked(i.node, i.index, i.n, Interrupt(value=read(i.value), id=i.id))
            for i in cp.interrupts
        ]

    @staticmethod
    def _reader(cp: Checkpoint) -> Callable[[Any], Any]:
        # Version 1 stored plain JSON (no tags): read it as it was written.
        return decode_value if cp.schema_version >= 2 else (lambda data: data)

    def load_state(self, cp: Checkpoint) -> Any:
        """The state ``cp`` holds: channel values, or a model instance (see ``held``)."""
        read = self._reader(cp)
        if self.held == "model":
            return self.schema.model.model_validate(read(cp.state))
        return self._typed(read(cp.state), cp.typed, check=True)

    def load_writes(self, cp: Checkpoint) -> dict[tuple[str, int], Mapping[str, Any]]:
        """The writes of ``cp``'s tasks, as the nodes returned them."""
        read = self._reader(cp)
        out: dict[tuple[str, int], Mapping[str, Any]] = {}
        for w in cp.pending_writes:
            if w.node == START:
                updates = dict(read(w.updates))
            else:
                updates = dict(self.schema.check_update(w.node, cp.step, read(w.updates)))
            out[(w.node, w.index)] = self._typed(updates, w.typed, check=False)
        return out

    def _typed(self, values: dict[str, Any], typed: list[str], *, check: bool) -> dict[str, Any]:
        """``values`` with its ``typed`` keys rebuilt by their channel's type; ``check``: also
        refuse a value of a pydantic state's field that its type rejects (a corrupt row)."""
        for key in typed:
            if key not in values:
                raise ValueError(f"typed field {key!r} is not in the write")
            adapter = self.schema.adapter(key) if key in self.schema.channels else None
            if adapter is None:
                raise ValueError(f"typed field {key!r} has no type to rebuild it with")
            values[key] = adapter.validate_python(values[key])
        if check and self.schema.kind == "pydantic":
            for key, value in values.items():
                channel = self.schema.channels.get(key)
                if channel is None:
                    raise ValueError(f"{key!r} is no field of {self.schema.state.__qualname__}")
                adapter = self.schema.adapter(key)
                if key not in typed and channel.public and adapter is not None:
                    adapter.validate_python(value)  # a ValidationError for a corrupt value
        return values

    def _saved_task(self, cp: Checkpoint, ref: TaskRef) -> SavedTask:
        read = self._reader(cp)
        payload: Any = None
        if ref.payload_kind == "state":
            cls = self.schema.classes.get(ref.payload_schema) if ref.payload_schema else None
            if ref.payload_schema and cls is None:
                raise ValueError(f"payload class {ref.payload_schema!r} is not in this graph")
            cls = cls or self.schema.state
            data = read(ref.payload)
            if isinstance(cls, type) and issubclass(cls, BaseModel):
                payload = cls.model_validate(data)
            else:
                payload = cls(**data)
        elif ref.payload_kind == "json":
            payload = read(ref.payload)
        return SavedTask(ref.node, ref.index, payload, ref.payload_kind != "none")

    # -- both --------------------------------------------------------------------

    def _problem(self, cp: Checkpoint) -> str | None:
        """What in ``cp`` the graph cannot resume, or None."""
        nodes = self.topology.nodes
        known = f"(its nodes: {sorted(nodes)})"
        orders: set[tuple[str, int]] = set()
        for ref in cp.next_tasks:
            start = ref.node == START and cp.source == "input"
            if ref.node not in nodes and not start:
                return f"names task {ref.node!r}, a node the graph does not have {known}"
            sent = ref.payload_kind != "none"
            if (not start and (ref.index >= 0) != sent) or ref.index < -1:
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
        asked = [(q.node, q.index) for q in cp.interrupts]
        for node, index in asked + [(r.node, r.index) for r in cp.resumes]:
            if (node, index) not in orders:
                return f"holds a question or answer of node {node!r}, which is no task of its step"
        for w in cp.pending_writes:
            if w.node not in nodes and w.node != START:
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


def _init_fields(obj: Any) -> dict[str, Any]:
    """A dataclass instance's fields that its constructor takes (enough to build it again)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


def _field(model: BaseModel, name: str) -> Any:
    if name in type(model).model_fields:
        return getattr(model, name)
    return (model.__pydantic_extra__ or {}).get(name)
