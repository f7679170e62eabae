"""Human-in-the-loop: interrupt() on every lane, resuming with answers, breakpoints, durability."""

from __future__ import annotations

import json
import operator
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, TypedDict

import cloudpickle
import pytest

from engine import START, Command, Graph, Interrupt, RetryPolicy, Send, interrupt
from engine.checkpoint import MemoryCheckpointer
from engine.interrupts import NodeInterrupt, interrupt_id
from tests.conftest import postgres_dsn

# cpu-lane workers cannot import the tests package: this module travels by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class State(TypedDict):
    log: Annotated[list[str], operator.add]


#: Calls per node in this process (the driver's lanes), reset by each test that reads it.
CALLS: Counter[str] = Counter()


def ask_here(state: State) -> dict[str, Any]:
    CALLS["ask"] += 1
    answer = interrupt({"question": "ship it?"})
    return {"log": [f"{answer}@{os.getpid()}"]}


async def ask_async(state: State) -> dict[str, Any]:
    CALLS["ask"] += 1
    answer = interrupt({"question": "ship it?"})
    return {"log": [f"{answer}@{os.getpid()}"]}


def compute(state: State) -> dict[str, Any]:
    CALLS["compute"] += 1
    return {"log": ["computed"]}


def ask_budget(state: State) -> dict[str, Any]:
    CALLS["budget"] += 1
    return {"log": [f"budget={interrupt('budget?')}"]}


def ask_deadline(state: State) -> dict[str, Any]:
    CALLS["deadline"] += 1
    return {"log": [f"deadline={interrupt('deadline?')}"]}


def ask_name(state: State) -> dict[str, Any]:
    CALLS["name"] += 1
    first = interrupt("first name?")
    last = interrupt("last name?")
    return {"log": [f"name={first} {last}@{os.getpid()}"]}


def raise_node_interrupt(state: State) -> dict[str, Any]:
    CALLS["old"] += 1
    if not state["log"]:
        raise NodeInterrupt("approve the empty log?")
    return {"log": ["went on"]}


class Fan(TypedDict):
    items: list[int]
    log: Annotated[list[str], operator.add]


def fan_out(state: Fan) -> list[Send]:
    return [Send("work", {"i": i, "log": []}) for i in state["items"]]


def ask_if_odd(arg: dict[str, Any]) -> dict[str, Any]:
    answer = interrupt(f"odd {arg['i']}?") if arg["i"] % 2 else "even"
    return {"log": [f"{arg['i']}={answer}"]}


def step(name: str) -> Any:
    def run(state: State) -> dict[str, Any]:
        CALLS[name] += 1
        return {"log": [name]}

    run.__name__ = name
    return run


def one_question(lane: str) -> Graph[State]:
    g: Graph[State] = Graph(State)
    g.add_node("ask", ask_async if lane == "io" else ask_here, lane=lane)
    g.add_node("compute", compute, lane="thread")
    g.add_edge(START, "ask")
    g.add_edge(START, "compute")
    return g


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    CALLS.clear()


class TestEveryLane:
    @pytest.mark.parametrize("lane", ["io", "inline", "thread", "cpu"])
    async def test_a_question_stops_the_run_and_its_answer_resumes_it(self, lane: str) -> None:
        """interrupt() stops the run after the step, on every lane (a cpu node in a worker
        process); the answer comes back as interrupt()'s value when the node runs again."""
        app = one_question(lane).compile(MemoryCheckpointer())
        first = await app.arun({"log": []}, thread_id="t")

        assert first.interrupted
        (asked,) = first.interrupts
        assert isinstance(asked, Interrupt) and asked.value == {"question": "ship it?"}
        assert first.state == {"log": ["computed"]}  # the finished sibling's write shows
        snap = await app.aget_state("t")
        assert snap.interrupts == (asked,) and snap.next == ("ask",)
        assert {t.name: t.interrupts for t in snap.tasks} == {"ask": (asked,), "compute": ()}

        done = await app.arun(Command(resume="yes"), thread_id="t")

        assert not done.interrupted and done.interrupts == ()
        answer, pid = done.state["log"][0].split("@")
        assert answer == "yes" and done.state["log"][1:] == ["computed"]
        if lane == "cpu":
            assert int(pid) != os.getpid()  # answered inside a worker process
        else:
            assert int(pid) == os.getpid()
            assert CALLS["ask"] == 2
        assert CALLS["compute"] == 1  # finished in the interrupted step: never re-run
        assert (await app.aget_state("t")).interrupts == ()

    async def test_every_mode(self, mode: str) -> None:
        """Sequential, concurrent and parallel runs stop and resume the same way."""
        app = one_question("thread").compile(MemoryCheckpointer())
        assert (await app.arun({"log": []}, thread_id="t", mode=mode)).interrupted
        done = await app.arun(Command(resume="ok"), thread_id="t", mode=mode)
        assert [x.split("@")[0] for x in done.state["log"]] == ["ok", "computed"]


class TestResume:
    @pytest.mark.parametrize("lane", ["thread", "cpu"])
    async def test_several_questions_in_one_node_are_answered_in_order(self, lane: str) -> None:
        """A node asking twice gets its first answer back on the second run and stops at
        its second question (a new id); the third run has both answers, in order."""
        g: Graph[State] = Graph(State)
        g.add_node("name", ask_name, lane=lane)
        g.add_edge(START, "name")
        app = g.compile(MemoryCheckpointer())

        first = await app.arun({"log": []}, thread_id="t")
        second = await app.arun(Command(resume="Ada"), thread_id="t")
        third = await app.arun(Command(resume="Lovelace"), thread_id="t")

        assert [i.value for i in first.interrupts] == ["first name?"]
        assert [i.value for i in second.interrupts] == ["last name?"]
        assert first.interrupts[0].id != second.interrupts[0].id
        assert third.state["log"][0].split("@")[0] == "name=Ada Lovelace"
        if lane == "thread":
            assert CALLS["name"] == 3

    async def test_parallel_questions_are_answered_by_id(self) -> None:
        """Two nodes asking in one step: an answer by id resumes one; the other asks again
        with the same id; the sibling that finished in that step never runs again."""
        g: Graph[State] = Graph(State)
        for name, fn in (("budget", ask_budget), ("deadline", ask_deadline), ("c", compute)):
            g.add_node(name, fn, lane="thread")
            g.add_edge(START, name)
        app = g.compile(MemoryCheckpointer())
        first = await app.arun({"log": []}, thread_id="t")
        ids = {i.value: i.id for i in first.interrupts}
        assert set(ids) == {"budget?", "deadline?"}

        with pytest.raises(RuntimeError, match=r"2 open interrupts.*interrupt_id"):
            await app.arun(Command(resume="?"), thread_id="t")
        partial = await app.arun(Command(resume={ids["budget?"]: "10k"}), thread_id="t")

        assert [(i.value, i.id) for i in partial.interrupts] == [("deadline?", ids["deadline?"])]
        assert sorted(partial.state["log"]) == ["budget=10k", "computed"]
        done = await app.arun(Command(resume={ids["deadline?"]: "friday"}), thread_id="t")
        assert sorted(done.state["log"]) == ["budget=10k", "computed", "deadline=friday"]
        assert dict(CALLS) == {"budget": 2, "deadline": 3, "compute": 1}

    async def test_sends_on_the_cpu_lane_are_answered_each_by_id(self) -> None:
        """A Send fan-out of cpu calls (batched into chunks): each interrupted Send is its
        own task with its own id; the resume runs just those, each with its answer."""
        g: Graph[Fan] = Graph(Fan)
        g.add_node("work", ask_if_odd, lane="cpu")
        g.add_conditional_edges(START, fan_out)
        app = g.compile(MemoryCheckpointer())
        first = await app.arun({"items": list(range(6)), "log": []}, thread_id="t")
        assert sorted(first.state["log"]) == ["0=even", "2=even", "4=even"]
        answers = {i.id: i.value.replace("?", "!") for i in first.interrupts}
        assert len(answers) == 3
        done = await app.arun(Command(resume=answers), thread_id="t")
        assert sorted(done.state["log"]) == [
            "0=even", "1=odd 1!", "2=even", "3=odd 3!", "4=even", "5=odd 5!"
        ]  # fmt: skip
        assert len(done.trace.calls) == 3  # only the interrupted Sends ran again

    async def test_an_interrupt_is_never_retried(self) -> None:
        """A question is not a failure: a RetryPolicy does not run the node again."""
        g: Graph[State] = Graph(State)
        g.add_node("ask", ask_here, lane="thread", retry=RetryPolicy(max_attempts=3))
        g.add_edge(START, "ask")
        result = await g.compile(MemoryCheckpointer()).arun({"log": []}, thread_id="t")
        assert result.interrupted and CALLS["ask"] == 1

    async def test_node_interrupt_raised_by_a_node_stops_the_run(self) -> None:
        """LangGraph's older NodeInterrupt(value) stops the run with that question."""
        g: Graph[State] = Graph(State)
        g.add_node("old", raise_node_interrupt, lane="thread")
        g.add_edge(START, "old")
        result = await g.compile(MemoryCheckpointer()).arun({"log": []}, thread_id="t")
        assert [i.value for i in result.interrupts] == ["approve the empty log?"]

    async def test_without_a_checkpointer_the_questions_still_come_back(self) -> None:
        """A run with no thread stops and shows its questions (nothing can resume it)."""
        result = await one_question("thread").compile().arun({"log": []})
        assert result.interrupted and [i.value for i in result.interrupts] == [
            {"question": "ship it?"}
        ]

    def test_ids_depend_on_thread_checkpoint_task_and_position_only(self) -> None:
        """An interrupt's id is a pure function: any process computes the same one."""
        a = interrupt_id("t", "", "cp1", ("ask", -1), 0)
        assert a == interrupt_id("t", "", "cp1", ("ask", -1), 0)
        others = {
            interrupt_id("u", "", "cp1", ("ask", -1), 0),
            interrupt_id("t", "sub", "cp1", ("ask", -1), 0),
            interrupt_id("t", "", "cp2", ("ask", -1), 0),
            interrupt_id("t", "", "cp1", ("ask", 0), 0),
            interrupt_id("t", "", "cp1", ("ask", -1), 1),
        }
        assert a not in others and len(others) == 5 and len(a) == 32

    async def test_an_edit_while_a_question_is_open_keeps_it_open(self) -> None:
        """update_state on a thread stopped on a question: the edit is continued (its node
        is the one that made the checkpoint), and the answer still reaches the node."""
        g: Graph[State] = Graph(State)
        g.add_node("first", step("first"), lane="thread")
        g.add_node("ask", ask_here, lane="thread")
        g.add_edge(START, "first")
        g.add_edge("first", "ask")
        app = g.compile(MemoryCheckpointer())
        await app.arun({"log": []}, thread_id="t")
        await app.aupdate_state("t", {"log": ["edit"]})  # as "first", which wrote the step
        assert (await app.aget_state("t")).next == ("ask",)
        done = await app.arun(Command(resume="A"), thread_id="t")
        assert [x.split("@")[0] for x in done.state["log"]] == ["first", "edit", "A"]
        assert dict(CALLS) == {"first": 1, "ask": 2}

    async def test_a_new_input_drops_the_questions_and_keeps_finished_writes(self) -> None:
        """An interrupted thread given a new input starts over from its values, the
        finished calls' writes included (as LangGraph does)."""
        app = one_question("thread").compile(MemoryCheckpointer())
        await app.arun({"log": []}, thread_id="t")
        again = await app.arun({"log": ["new"]}, thread_id="t")
        assert again.interrupted and again.state["log"][:2] == ["computed", "new"]


def chain(**breakpoints: Any) -> Any:
    g: Graph[State] = Graph(State)
    for name in ("a", "b", "c"):
        g.add_node(name, step(name), lane="thread")
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    return g.compile(MemoryCheckpointer(), **breakpoints)


class TestBreakpoints:
    async def test_interrupt_before_stops_before_the_step_and_none_goes_on(self) -> None:
        """compile(interrupt_before=["b"]): the run stops before b; arun(None) runs b once."""
        app = chain(interrupt_before=["b"])
        paused = await app.arun({"log": []}, thread_id="t")
        assert paused.interrupted and paused.interrupts == () and paused.state == {"log": ["a"]}
        assert (await app.aget_state("t")).next == ("b",)
        done = await app.arun(None, thread_id="t")
        assert done.state == {"log": ["a", "b", "c"]} and not done.interrupted
        assert dict(CALLS) == {"a": 1, "b": 1, "c": 1}

    async def test_interrupt_after_per_call_and_every_node(self) -> None:
        """A run's own interrupt_after stops after the step that ran the node; "*" stops
        before every step."""
        app = chain()
        paused = await app.arun({"log": []}, thread_id="t", interrupt_after=["b"])
        assert paused.state == {"log": ["a", "b"]}
        assert (await app.aget_state("t")).next == ("c",)
        assert (await app.arun(None, thread_id="t")).state == {"log": ["a", "b", "c"]}

        star = await app.arun({"log": []}, thread_id="u", interrupt_before="*")
        assert star.state == {"log": []} and (await app.aget_state("u")).next == ("a",)
        one = await app.arun(None, thread_id="u", interrupt_before="*")
        assert one.state == {"log": ["a"]} and (await app.aget_state("u")).next == ("b",)

    def test_an_unknown_node_is_refused_at_compile_time(self) -> None:
        """A breakpoint naming no node of the graph is a ValueError naming it."""
        with pytest.raises(ValueError, match=r"interrupt_before names \['nope'\]"):
            chain(interrupt_before=["nope"])

    async def test_a_paused_thread_can_be_edited_before_it_goes_on(self) -> None:
        """update_state while stopped before b: the edit is continued, b is not re-asked."""
        app = chain(interrupt_before=["b"])
        await app.arun({"log": []}, thread_id="t")
        await app.aupdate_state("t", {"log": ["edited"]})
        assert (await app.aget_state("t")).next == ("b",)
        done = await app.arun(None, thread_id="t")
        assert done.state == {"log": ["a", "edited", "b", "c"]}


class TestStreams:
    async def test_updates_and_values_show_the_questions(self) -> None:
        """updates: a {"__interrupt__": (...)} chunk, then the finished calls' updates;
        values: the state with "__interrupt__", then the state with those writes."""
        app = one_question("thread").compile(MemoryCheckpointer())
        chunks = [
            c
            async for c in app.astream(
                {"log": []}, thread_id="t", stream_mode=["updates", "values"]
            )
        ]
        asked = (await app.aget_state("t")).interrupts
        assert chunks[-4:] == [
            ("updates", {"__interrupt__": asked}),
            ("values", {"log": [], "__interrupt__": asked}),
            ("updates", {"compute": {"log": ["computed"]}}),
            ("values", {"log": ["computed"]}),
        ]

    def test_the_langgraph_layer_shows_them_as_langgraph_does(self) -> None:
        """engine.langgraph: "__interrupt__" in invoke's output, GraphOutput.interrupts in
        v2, the interrupts of v2 values parts; Command(resume=...) resumes."""
        from engine.langgraph import InMemorySaver, StateGraph

        b = StateGraph(State)
        b.add_node("ask", ask_here)
        b.add_edge(START, "ask")
        graph = b.compile(checkpointer=InMemorySaver())
        config = {"configurable": {"thread_id": "t"}}
        out = graph.invoke({"log": []}, config)
        (asked,) = out["__interrupt__"]
        assert out == {"log": [], "__interrupt__": [asked]}
        assert graph.invoke(Command(resume="go"), config)["log"][0].startswith("go@")

        v2 = graph.invoke({"log": []}, {"configurable": {"thread_id": "u"}}, version="v2")
        assert v2.value == {"log": []} and [i.value for i in v2.interrupts] == [
            {"question": "ship it?"}
        ]
        parts = list(
            graph.stream(
                {"log": []}, {"configurable": {"thread_id": "w"}}, stream_mode="values",
                version="v2",
            )
        )  # fmt: skip
        assert [len(p["interrupts"]) for p in parts] == [0, 1]
        assert "__interrupt__" not in parts[-1]["data"]


DRIVER = textwrap.dedent(
    """
    import json, operator, os, sys
    from typing import Annotated, TypedDict

    from engine import START, Command, Graph, interrupt
    from engine.checkpoint import PostgresCheckpointer, SqliteCheckpointer

    class State(TypedDict):
        log: Annotated[list[str], operator.add]

    def mark(name):
        with open(os.environ["HITL_CALLS"], "a") as f:
            f.write(name + "\\n")

    def ask(state):
        mark("ask")
        return {"log": [f"ask={interrupt('ship it?')}"]}

    def work(state):
        mark("work")
        return {"log": ["work"]}

    def after(state):
        mark("after")
        return {"log": ["after"]}

    backend, target, phase = sys.argv[1:4]
    cp = SqliteCheckpointer(target) if backend == "sqlite" else PostgresCheckpointer(target)
    g = Graph(State)
    g.add_node("ask", ask, lane="cpu")
    g.add_node("work", work, lane="thread")
    g.add_node("after", after, lane="thread")
    g.add_edge(START, "ask")
    g.add_edge(START, "work")
    g.add_edge(["ask", "work"], "after")
    app = g.compile(cp)
    thread = os.environ["HITL_THREAD"]
    if phase == "ask":
        r = app.run({"log": []}, thread_id=thread)
    else:
        r = app.run(Command(resume={phase: "yes"}), thread_id=thread)
    print(json.dumps({"log": r.state["log"], "ids": [i.id for i in r.interrupts]}))
    """
)


class TestDurable:
    @pytest.mark.parametrize(
        "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
    )
    def test_a_second_process_resumes_by_id_and_reruns_nothing_finished(
        self, tmp_path: Path, backend: str
    ) -> None:
        """The driver that asked exits; another process answers by id from the store:
        only the interrupted cpu node runs again, then the rest of the graph."""
        target = str(tmp_path / "cp.sqlite") if backend == "sqlite" else postgres_dsn()
        script = tmp_path / "driver.py"
        script.write_text(DRIVER)
        calls = tmp_path / "calls"
        env = {
            **os.environ,
            "HITL_CALLS": str(calls),
            "HITL_THREAD": f"durable-{os.getpid()}-{tmp_path.name}",
        }

        def run(phase: str) -> dict[str, Any]:
            out = subprocess.run(
                [sys.executable, str(script), backend, target, phase],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert out.returncode == 0, out.stderr[-3000:]
            result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
            return result

        first = run("ask")
        assert first["log"] == ["work"] and len(first["ids"]) == 1
        second = run(first["ids"][0])
        assert second == {"log": ["ask=yes", "work", "after"], "ids": []}
        assert sorted(calls.read_text().split()) == ["after", "ask", "ask", "work"]


# -- a resume with no question open -----------------------------------------------------


class TestResumeWithNoQuestionOpen:
    @pytest.mark.parametrize("lane", ["thread", "cpu"])
    async def test_the_value_answers_the_first_interrupt_of_the_resumed_step(
        self, lane: str
    ) -> None:
        """Stopped at a breakpoint (no question open), Command(resume=value) answers the
        first interrupt() of the step the run resumes with, on every lane; a sibling that
        does not ask drops it, and a second question is asked."""
        g = Graph(State)
        g.add_node("compute", compute)
        g.add_node("name", ask_name, lane=lane)
        g.add_edge(START, "compute")
        g.add_edge(START, "name")
        app = g.compile(MemoryCheckpointer(), interrupt_before=["name"])
        await app.arun({"log": []}, thread_id="t")
        asked = await app.arun(Command(resume="Ada"), thread_id="t")
        assert [i.value for i in asked.interrupts] == ["last name?"]
        done = await app.arun(Command(resume="Lovelace"), thread_id="t")
        assert [e.split("@")[0] for e in done.state["log"]] == ["computed", "name=Ada Lovelace"]

    async def test_a_finished_thread_runs_nothing_and_the_next_run_is_asked(self) -> None:
        """On a thread whose run finished, the value is dropped: nothing runs, and the
        next run's interrupt() asks (LangGraph's)."""
        g = Graph(State)
        g.add_node("ask", ask_budget)
        g.add_edge(START, "ask")
        app = g.compile(MemoryCheckpointer())
        await app.arun({"log": []}, thread_id="t")
        first = await app.arun(Command(resume="10"), thread_id="t")
        assert first.state == {"log": ["budget=10"]}
        again = await app.arun(Command(resume="20"), thread_id="t")
        assert again.state == {"log": ["budget=10"]} and not again.interrupted
        nxt = await app.arun({"log": []}, thread_id="t")
        assert [i.value for i in nxt.interrupts] == ["budget?"]


def _resume_with_nothing_open(framework: str) -> list[Any]:
    """One program under ``langgraph`` or ``engine.langgraph``: a breakpoint before a step
    of a node that asks and one that does not; resumes with a value, then a mapping."""
    if framework == "langgraph":
        from langgraph.checkpoint.memory import InMemorySaver
        from langgraph.graph import StateGraph
        from langgraph.types import Command as Cmd
        from langgraph.types import interrupt as ask
    else:
        from engine.langgraph import Command as Cmd  # type: ignore[assignment]
        from engine.langgraph import InMemorySaver, StateGraph  # type: ignore[assignment]
        from engine.langgraph import interrupt as ask

    def a_note(state: State) -> dict[str, Any]:
        return {"log": ["note"]}

    def review(state: State) -> dict[str, Any]:
        return {"log": [f"review:{ask('ok?')}"]}

    g = StateGraph(State)
    g.add_node("a_note", a_note)
    g.add_node("review", review)
    g.add_edge(START, "a_note")
    g.add_edge(START, "review")
    app = g.compile(checkpointer=InMemorySaver(), interrupt_before=["review"])
    seen: list[Any] = []
    for thread, value in (("t1", "yes"), ("t2", {"not-an-id": "yes"})):
        cfg: Any = {"configurable": {"thread_id": thread}}
        seen.append(app.invoke({"log": []}, cfg))
        seen.append(app.invoke(Cmd(resume=value), cfg))
        seen.append(app.invoke(Cmd(resume="late"), cfg))  # finished: nothing runs
    return seen


def test_a_resume_with_nothing_open_as_langgraph() -> None:
    """Side by side: the value (a mapping too) answers the resumed step's interrupt(),
    past a sibling that does not ask; on a finished thread it changes nothing."""
    pytest.importorskip("langgraph")
    theirs = _resume_with_nothing_open("langgraph")
    assert _resume_with_nothing_open("engine") == theirs
    assert theirs[1] == {"log": ["note", "review:yes"]}


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_a_task_result_lists_the_questions_its_task_asked(durability: str) -> None:
    """In the ``tasks`` and ``debug`` streams, the task_result of a task that asked lists
    its question with the id the run stops on (LangGraph's shape); a task that wrote, none.
    With durability="async" the id may not be known yet: then the list is empty."""
    from engine.langgraph import InMemorySaver, StateGraph

    g = StateGraph(State)
    g.add_node("compute", compute)
    g.add_node("ask", ask_budget)
    g.add_edge(START, "compute")
    g.add_edge(START, "ask")
    app = g.compile(checkpointer=InMemorySaver())
    cfg: Any = {"configurable": {"thread_id": "t"}}
    chunks = list(
        app.stream(
            {"log": []}, cfg, stream_mode=["tasks", "debug", "updates"], durability=durability
        )
    )
    (stopped,) = [c["__interrupt__"] for m, c in chunks if m == "updates" and "__interrupt__" in c]
    results = [c for m, c in chunks if m == "tasks" and "result" in c]
    results += [c["payload"] for m, c in chunks if m == "debug" and c["type"] == "task_result"]
    asked = [r["interrupts"] for r in results if r["name"] == "ask"]
    wanted = [{"value": "budget?", "id": stopped[0].id, "response_schema": None}]
    assert len(asked) == 2 and all(
        a in (wanted, [] if durability == "async" else wanted) for a in asked
    )
    assert [r["interrupts"] for r in results if r["name"] == "compute"] == [[], []]


def _bare_answer_to_several_askers(framework: str) -> list[Any]:
    """One program under ``langgraph`` or ``engine.langgraph``: a breakpoint before a step
    of a node that does not ask and two that do; a bare value resumes it, then the
    question still open is answered by its id."""
    if framework == "langgraph":
        from langgraph.checkpoint.memory import InMemorySaver
        from langgraph.graph import StateGraph
        from langgraph.types import Command as Cmd
        from langgraph.types import interrupt as ask
    else:
        from engine.langgraph import Command as Cmd  # type: ignore[assignment]
        from engine.langgraph import InMemorySaver, StateGraph  # type: ignore[assignment]
        from engine.langgraph import interrupt as ask

    calls: Counter[str] = Counter()

    def a_note(state: State) -> dict[str, Any]:
        calls["a_note"] += 1
        return {"log": ["note"]}

    def budget(state: State) -> dict[str, Any]:
        calls["budget"] += 1
        return {"log": [f"budget={ask('budget?')}"]}

    def deadline(state: State) -> dict[str, Any]:
        calls["deadline"] += 1
        return {"log": [f"deadline={ask('deadline?')}"]}

    g = StateGraph(State)
    for name, fn in (("deadline", deadline), ("budget", budget), ("a_note", a_note)):
        g.add_node(name, fn)
        g.add_edge(START, name)
    app = g.compile(checkpointer=InMemorySaver(), interrupt_before=["budget", "deadline"])
    cfg: Any = {"configurable": {"thread_id": "t"}}
    seen: list[Any] = [app.invoke({"log": []}, cfg)]
    out = app.invoke(Cmd(resume="10k"), cfg)
    (open_q,) = out["__interrupt__"]
    seen.append((out["log"], open_q.value))
    out = app.invoke(Cmd(resume={open_q.id: "friday"}), cfg)
    seen.append(out)
    seen.append(sorted(calls.items()))
    return seen


def test_a_bare_answer_goes_to_one_of_the_askers_as_langgraph() -> None:
    """Side by side: with no question open, a bare value answers one task of the resumed
    step (past a sibling that does not ask); the other asker asks again, and its answer
    by id resumes it; each asker runs again only to get its own answer."""
    pytest.importorskip("langgraph")
    theirs = _bare_answer_to_several_askers("langgraph")
    assert _bare_answer_to_several_askers("engine") == theirs
    assert theirs[1] == (["note", "budget=10k"], "deadline?")
    assert theirs[2] == {"log": ["note", "budget=10k", "deadline=friday"]}


def fan_out_to_askers(state: Fan) -> list[Send]:
    return [Send("work", {"i": i, "log": []}) for i in state["items"]]


def ask_each(arg: dict[str, Any]) -> dict[str, Any]:
    i = arg["i"]
    return {"log": [f"{i}={interrupt(f'item {i}?')}@{os.getpid()}"]}


class TestBareAnswerToSeveralAskers:
    @pytest.mark.parametrize("mode", ["sequential", "concurrent", "parallel"])
    async def test_the_first_send_gets_it_on_the_cpu_lane(self, mode: str) -> None:
        """Sends to a cpu-lane node that asks (worker processes in parallel mode): a bare
        value after a breakpoint answers the first Send only (decided in the driver, as
        LangGraph gives it to the first); the others ask again, answered later by id."""
        g: Graph[Fan] = Graph(Fan)
        g.add_node("work", ask_each, lane="cpu")
        g.add_conditional_edges(START, fan_out_to_askers, ["work"])
        app = g.compile(MemoryCheckpointer(), interrupt_before=["work"])
        await app.arun({"items": [0, 1, 2], "log": []}, thread_id="t", mode=mode)

        second = await app.arun(Command(resume="yes"), thread_id="t", mode=mode)

        assert [q.value for q in second.interrupts] == ["item 1?", "item 2?"]
        assert [entry.split("@")[0] for entry in second.state["log"]] == ["0=yes"]
        answers = {q.id: f"no{q.value[5]}" for q in second.interrupts}
        done = await app.arun(Command(resume=answers), thread_id="t", mode=mode)
        assert [entry.split("@")[0] for entry in done.state["log"]] == ["0=yes", "1=no1", "2=no2"]
        if mode == "parallel":
            assert all(entry.split("@")[1] != str(os.getpid()) for entry in done.state["log"])

    async def test_when_no_node_shows_it_asks_each_task_gets_it(self) -> None:
        """A node asking through a helper is not seen to ask: the bare value then goes to
        every task of the resumed step (the engine's rule; see docs/hitl.md)."""
        g: Graph[State] = Graph(State)
        g.add_node("a", step_asking("a"))
        g.add_node("b", step_asking("b"))
        g.add_edge(START, "a")
        g.add_edge(START, "b")
        app = g.compile(MemoryCheckpointer(), interrupt_before=["a", "b"])
        await app.arun({"log": []}, thread_id="t")
        done = await app.arun(Command(resume="go"), thread_id="t")
        assert not done.interrupted
        assert done.state["log"] == ["a=go", "b=go"]


def _ask_for(name: str) -> Any:
    return interrupt(f"{name}?")


def step_asking(name: str) -> Any:
    def run(state: State) -> dict[str, Any]:
        return {"log": [f"{name}={_ask_for(name)}"]}

    return run
