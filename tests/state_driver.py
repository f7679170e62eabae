"""A tiny synchronous runner built only on the state and checkpoint modules' APIs.

It stands where the scheduler will: it runs super-steps of plain functions
through ``StateSchema`` (views, ``check_update``, ``apply``), saves every
step with ``RunCodec(held="values")`` into a real checkpointer, and answers
LangGraph's state API (``get_state``, ``get_state_history``,
``update_state``, time travel) with ``engine.checkpoint.history``. Tests run
the same scenario against it and against LangGraph and compare the records:
proof that the data side is enough for the state API, and a worked example
of the calls the scheduler integration makes. Not a scheduler: one thread,
no lanes, no retries, no recursion limit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.checkpoint import Checkpoint, Checkpointer
from engine.checkpoint import history as hist
from engine.checkpoint.snapshot import RunCodec, Topology
from engine.spec import END, START, Send
from engine.state import StateSchema, Values, Write


@dataclass(frozen=True)
class Task:
    node: str
    index: int = -1
    payload: Any = None
    has_payload: bool = False


class Driver:
    """``nodes``: name -> fn(state); ``edges``: source -> targets; ``routers``: source ->
    fn(state) returning a node name, END, a list of names or of ``Send``s."""

    def __init__(
        self,
        schema: StateSchema,
        nodes: Mapping[str, Callable[[Any], Any]],
        edges: Mapping[str, Sequence[str]],
        store: Checkpointer,
        routers: Mapping[str, Callable[[Any], Any]] | None = None,
    ) -> None:
        self.schema = schema
        self.nodes = dict(nodes)
        self.edges = {k: list(v) for k, v in edges.items()}
        self.routers = dict(routers or {})
        self.store = store
        self.codec = RunCodec(schema, Topology(frozenset(nodes), {}), held="values")

    # -- running ------------------------------------------------------------------

    def _route(
        self, ran: Sequence[str], values: Values, step: int, fanin: dict[str, set[str]]
    ) -> list[Task]:
        names: set[str] = set()
        sends: list[Send] = []
        for node in ran:
            names.update(t for t in self.edges.get(node, ()) if t != END)
            router = self.routers.get(node)
            if router is not None:
                got = router(self.schema.state_view(values))
                for item in got if isinstance(got, list) else [got]:
                    if isinstance(item, Send):
                        sends.append(item)
                    elif item != END:
                        names.add(item)
        tasks = [Task(n) for n in names]
        tasks += [Task(s.node, i, s.arg, True) for i, s in enumerate(sends)]
        return sorted(tasks, key=lambda t: (t.node, t.index))

    def _put(self, cp: Checkpoint) -> Checkpoint:
        return asyncio.run(self.store.put(cp))

    def _save(self, **kwargs: Any) -> Checkpoint:
        return self._put(self.codec.save(started_at=None, fanin={}, **kwargs))

    def invoke(self, input: Any, config: Mapping[str, Any]) -> Any:
        conf = config["configurable"]
        tid, cid = conf["thread_id"], conf.get("checkpoint_id")
        run = uuid.uuid4().hex[:8]
        meta = config.get("metadata")
        latest = asyncio.run(self.store.get(tid))
        if input is not None:
            values = hist.values_of(self.codec, latest) if latest else self.schema.initial()
            step = latest.step + 1 if latest else -1
            first = self._save(
                thread_id=tid,
                run_id=run,
                step=step,
                state=values,
                tasks=[Task(START, -1, input, True)],
                pending={},
                status="running",
                source="input",
                parent_id=latest.checkpoint_id if latest else None,
                metadata=meta,
                writers=[],
            )
            updates = self.schema.input_updates(input)
            values = self.schema.apply(values, [Write(START, -1, updates)], step)
            tasks = self._route([START], values, step, {})
            current = self._save(
                thread_id=tid,
                run_id=run,
                step=step + 1,
                state=values,
                tasks=tasks,
                pending={},
                status="running" if tasks else "done",
                written={(START, -1): updates},
                parent_id=first.checkpoint_id,
                metadata=meta,
            )
        else:
            picked = asyncio.run(self.store.get(tid, cid))
            assert picked is not None, "nothing to resume"
            current = picked
            if hist.starts_fork(picked, named=cid is not None):
                current = self._put(hist.fork(picked, run_id=run))
        restored = self.codec.load(current)
        values, tasks, pending = restored.state, restored.tasks, dict(restored.pending)
        step = current.step
        while tasks:
            writes = dict(pending)
            errors: dict[tuple[str, int], BaseException] = {}
            for task in tasks:
                if (task.node, task.index) in writes:
                    continue
                arg = task.payload if task.has_payload else self.schema.view(task.node)(values)
                try:
                    out = self.nodes[task.node](arg)
                except Exception as exc:
                    errors[(task.node, task.index)] = exc
                    continue
                writes[(task.node, task.index)] = self.schema.check_update(task.node, step, out)
            try:
                if errors:
                    raise next(iter(errors.values()))
                new = self.schema.apply(
                    values, [Write(n, i, u) for (n, i), u in writes.items()], step
                )
            except Exception:
                # The step stopped: the same checkpoint again, with what finished.
                self._put(
                    self.codec.save(
                        thread_id=tid,
                        run_id=run,
                        step=step,
                        state=values,
                        tasks=tasks,
                        fanin={},
                        pending=writes,
                        status="failed",
                        started_at=None,
                        checkpoint_id=current.checkpoint_id,
                        parent_id=current.parent_id,
                        source=current.source,
                        errors=errors,
                        writers=current.writers,
                        metadata=meta,
                    )
                )
                raise
            ran = sorted({t.node for t in tasks})
            values, tasks, pending = new, self._route(ran, new, step, {}), {}
            step += 1
            current = self._save(
                thread_id=tid,
                run_id=run,
                step=step,
                state=values,
                tasks=tasks,
                pending={},
                status="running" if tasks else "done",
                written=writes,
                parent_id=current.checkpoint_id,
                metadata=meta,
            )
        return self.schema.output(values)

    # -- the state API ------------------------------------------------------------

    def get_state(self, config: Mapping[str, Any]) -> hist.StateSnapshot:
        conf = config["configurable"]
        cid = conf.get("checkpoint_id")
        cp = asyncio.run(self.store.get(conf["thread_id"], cid))
        if cp is None:
            return hist.empty_snapshot(config)
        return hist.snapshot(self.codec, cp, latest=cid is None)

    def get_state_history(
        self,
        config: Mapping[str, Any],
        *,
        limit: int | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> Iterator[hist.StateSnapshot]:
        found = asyncio.run(
            self.store.history(config["configurable"]["thread_id"], limit=limit, filter=filter)
        )
        return iter([hist.snapshot(self.codec, cp) for cp in found])

    def update_state(
        self, config: Mapping[str, Any], values: Any, as_node: str | None = None
    ) -> dict[str, Any]:
        conf = config["configurable"]
        tid = conf["thread_id"]
        base = asyncio.run(self.store.get(tid, conf.get("checkpoint_id")))
        cp = hist.update(
            self.codec,
            base,
            values,
            as_node,
            thread_id=tid,
            run_id="update",
            nodes=self.nodes,
            route=self._route,
            metadata=config.get("metadata"),
        )
        return hist.config_of(tid, self._put(cp).checkpoint_id)
