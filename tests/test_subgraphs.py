"""Subgraphs on engine.Graph: a compiled graph as a node, a node invoking a subgraph, each
attached to the parent run (its mode, its worker pool), and ``stream(subgraphs=True)``."""

from __future__ import annotations

import operator
import os
import sys
import uuid
from collections import Counter
from typing import Annotated, Any, TypedDict

import cloudpickle
import pytest

from engine import END, START, Command, Graph, interrupt
from engine.checkpoint import MemoryCheckpointer
from engine.errors import InvalidUpdateError

cloudpickle.register_pickle_by_value(sys.modules[__name__])

MODES = ("sequential", "concurrent", "parallel")


class Team(TypedDict):
    topic: str
    notes: Annotated[list[str], operator.add]
    scratch: str  # the team's own key: the parent has none, so it is dropped


class Parent(TypedDict):
    topic: str
    notes: Annotated[list[str], operator.add]
    pid: int
    verdict: str


def gather(state: Team) -> dict[str, Any]:
    return {"notes": [f"gathered {state['topic']}"], "scratch": "kept inside"}


def condense(state: Team) -> dict[str, Any]:
    return {"notes": [f"condensed {len(state['notes'])}"]}


class Crunch(TypedDict):
    topic: str
    pid: int


def crunch(state: Crunch) -> dict[str, Any]:
    return {"topic": state["topic"].upper(), "pid": os.getpid()}


def team_graph() -> Any:
    g = Graph(Team)
    g.add_node("gather", gather)
    g.add_node("condense", condense)
    g.add_edge(START, "gather")
    g.add_edge("gather", "condense")
    g.add_edge("condense", END)
    return g.compile()


def crunch_graph() -> Any:
    g = Graph(Crunch)
    g.add_node("crunch", crunch, lane="cpu")
    g.add_edge(START, "crunch")
    g.add_edge("crunch", END)
    return g.compile()


def parent_graph() -> Any:
    g = Graph(Parent)
    g.add_node("team", team_graph())
    g.add_edge(START, "team")
    g.add_edge("team", END)
    return g.compile()


INPUT = {"topic": "bees", "notes": ["seed"], "pid": 0, "verdict": ""}


class TestCompiledGraphAsNode:
    @pytest.mark.parametrize("mode", MODES)
    def test_input_projected_output_through_the_parent_reducer(self, mode: str) -> None:
        """The subgraph gets the parent's keys it has, and its whole list is added again
        by the parent's reducer (LangGraph's behaviour); its own keys are dropped."""
        out = parent_graph().invoke(INPUT, mode=mode)
        assert out["notes"] == ["seed", "seed", "gathered bees", "condensed 2"]
        assert "scratch" not in out
        assert out["topic"] == "bees"

    def test_same_final_state_in_every_mode(self) -> None:
        """Sequential, concurrent and parallel runs of a graph with a subgraph agree."""
        states = [parent_graph().invoke(INPUT, mode=m) for m in MODES]
        assert states[0] == states[1] == states[2]

    def test_subgraph_cpu_node_runs_in_the_parent_pool(self) -> None:
        """In parallel mode a cpu node of a subgraph runs in a worker process, not the
        driver; in sequential mode it runs in the driver, as the parent's mode says."""
        g = Graph(Parent)
        g.add_node("crunch", crunch_graph())
        g.add_edge(START, "crunch")
        g.add_edge("crunch", END)
        app = g.compile()
        parallel = app.invoke(INPUT, mode="parallel")
        assert parallel["pid"] not in (0, os.getpid())
        assert parallel["topic"] == "BEES"
        sequential = app.invoke(INPUT, mode="sequential")
        assert sequential["pid"] == os.getpid()


class TestNodeInvokingSubgraph:
    @pytest.mark.parametrize("mode", MODES)
    def test_sync_node_invoking_a_subgraph_inherits_the_mode(self, mode: str) -> None:
        """``sub.invoke(...)`` inside a sync node runs in the parent run's mode."""
        sub = crunch_graph()

        def judge(state: Parent) -> dict[str, Any]:
            result = sub.invoke({"topic": "wasps", "pid": 0})
            return {"verdict": result["topic"], "pid": result["pid"]}

        g = Graph(Parent)
        g.add_node("judge", judge, lane="thread")
        g.add_edge(START, "judge")
        g.add_edge("judge", END)
        out = g.compile().invoke(INPUT, mode=mode)
        assert out["verdict"] == "WASPS"
        if mode == "parallel":
            assert out["pid"] != os.getpid()
        else:
            assert out["pid"] == os.getpid()

    def test_async_node_invoking_a_subgraph(self) -> None:
        """``await sub.ainvoke(...)`` inside an async node is attached the same way."""
        sub = team_graph()

        async def judge(state: Parent) -> dict[str, Any]:
            result = await sub.ainvoke({"topic": state["topic"], "notes": [], "scratch": ""})
            return {"verdict": result["notes"][-1]}

        g = Graph(Parent)
        g.add_node("judge", judge)
        g.add_edge(START, "judge")
        g.add_edge("judge", END)
        out = g.compile().invoke(INPUT, mode="concurrent")
        assert out["verdict"] == "condensed 1"


class TestStreamSubgraphs:
    def test_updates_carry_the_subgraph_namespace(self) -> None:
        """``subgraphs=True``: the subgraph's updates under ``("team:<task id>",)`` before
        the parent's own update of ``team`` under ``()``."""
        chunks = list(parent_graph().stream(INPUT, stream_mode="updates", subgraphs=True))
        namespaces = [ns for ns, _ in chunks]
        assert [list(c) for _, c in chunks] == [["gather"], ["condense"], ["team"]]
        assert namespaces[0] == namespaces[1] and namespaces[2] == ()
        (inner,) = namespaces[0]
        assert inner.startswith("team:") and len(inner) > len("team:")

    def test_modes_list_yields_triples(self) -> None:
        """A list of modes yields ``(ns, mode, chunk)``; the subgraph's values are its own."""
        items = list(
            parent_graph().stream(INPUT, stream_mode=["values", "updates"], subgraphs=True)
        )
        assert all(len(item) == 3 for item in items)
        inner_values = [c for ns, m, c in items if ns and m == "values"]
        assert inner_values[0] == {"topic": "bees", "notes": ["seed"]}

    def test_without_subgraphs_the_subgraph_chunks_are_not_shown(self) -> None:
        """The default stream shows only the parent's own chunks."""
        chunks = list(parent_graph().stream(INPUT, stream_mode="updates"))
        assert [list(c) for c in chunks] == [["team"]]


# -- checkpoints and questions ------------------------------------------------------------

CALLS: Counter[str] = Counter()


class Claim(TypedDict):
    claim: str
    trail: Annotated[list[str], operator.add]


def draft(state: Claim) -> dict[str, Any]:
    CALLS["draft"] += 1
    return {"trail": [f"drafted {state['claim']}"]}


def sign_off(state: Claim) -> dict[str, Any]:
    CALLS["sign_off"] += 1
    answer = interrupt({"sign": state["claim"]})
    return {"trail": [f"signed: {answer}"]}


def intake(state: Claim) -> dict[str, Any]:
    CALLS["intake"] += 1
    return {"trail": ["intake"]}


def approvals_graph() -> Any:
    g = Graph(Claim)
    g.add_node("draft", draft, lane="thread")
    g.add_node("sign_off", sign_off, lane="thread")
    g.add_edge(START, "draft")
    g.add_edge("draft", "sign_off")
    g.add_edge("sign_off", END)
    return g.compile()


def claims_app(store: Any = None) -> Any:
    g = Graph(Claim)
    g.add_node("intake", intake, lane="thread")
    g.add_node("approvals", approvals_graph())
    g.add_edge(START, "intake")
    g.add_edge("intake", "approvals")
    g.add_edge("approvals", END)
    return g.compile(store if store is not None else MemoryCheckpointer())


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    CALLS.clear()


class TestCheckpointsAndQuestions:
    @pytest.mark.parametrize("mode", MODES)
    async def test_a_question_inside_a_subgraph_stops_the_parent_and_resumes_there(
        self, mode: str
    ) -> None:
        """interrupt() in a subgraph's node stops the parent run; the answer resumes the
        subgraph from its own checkpoint: what finished inside it does not run again."""
        app = claims_app()
        first = await app.arun({"claim": "laptop", "trail": []}, thread_id="t", mode=mode)
        assert first.interrupted
        (asked,) = first.interrupts
        assert asked.value == {"sign": "laptop"}
        snap = await app.aget_state("t")
        assert snap.next == ("approvals",) and snap.interrupts == (asked,)

        done = await app.arun(Command(resume="yes"), thread_id="t", mode=mode)

        assert not done.interrupted
        assert done.state["trail"] == ["intake", "intake", "drafted laptop", "signed: yes"]
        assert Counter({"intake": 1, "draft": 1, "sign_off": 2}) == CALLS

    async def test_subgraph_steps_are_saved_under_their_own_namespace(self, store: Any) -> None:
        """The subgraph's checkpoints live under ``approvals:<task id>`` (every store): the
        parent's history holds only its own steps, get_state(subgraphs=True) shows the
        subgraph's state in its task (the same id as the task's), and the answer resumes
        the subgraph where it stopped."""
        app = claims_app(store)
        thread = f"t-{uuid.uuid4().hex[:8]}"
        await app.arun({"claim": "laptop", "trail": []}, thread_id=thread)
        history = await app.aget_state_history(thread)
        assert [(s.metadata["source"], s.metadata["step"]) for s in history] == [
            ("loop", 1),
            ("loop", 0),
            ("input", -1),
        ]
        (task,) = (await app.aget_state(thread)).tasks
        assert task.state["configurable"]["checkpoint_ns"] == f"approvals:{task.id}"
        (task,) = (await app.aget_state(thread, subgraphs=True)).tasks
        inner = task.state
        assert inner.values == {"claim": "laptop", "trail": ["intake", "drafted laptop"]}
        assert inner.next == ("sign_off",)
        assert inner.config["configurable"]["checkpoint_ns"] == f"approvals:{task.id}"
        again = await app.aget_state(inner.config)
        assert again.values == inner.values and again.next == inner.next
        done = await app.arun(Command(resume="ok"), thread_id=thread)
        assert done.state["trail"][-1] == "signed: ok"
        assert CALLS["draft"] == 1

    async def test_without_a_checkpointer_the_subgraph_saves_nothing(self) -> None:
        """A parent run without a thread runs its subgraph without checkpoints."""
        g = Graph(Parent)
        g.add_node("team", team_graph())
        g.add_edge(START, "team")
        app = g.compile()
        out = await app.ainvoke(INPUT)
        assert out["notes"][-1] == "condensed 2"


# -- Command.PARENT -----------------------------------------------------------------------


class Desk(TypedDict):
    request: str
    log: Annotated[list[str], operator.add]


def triage(state: Desk) -> Any:
    if "refund" in state["request"]:
        return Command(graph=Command.PARENT, goto="billing", update={"log": ["to billing"]})
    return {"log": ["answered"]}


def billing(state: Desk) -> dict[str, Any]:
    return {"log": ["billing"]}


def desk_graph() -> Any:
    g = Graph(Desk)
    g.add_node("triage", triage, lane="thread")
    g.add_edge(START, "triage")
    g.add_edge("triage", END)
    return g.compile()


class TestParentCommand:
    @pytest.mark.parametrize("mode", MODES)
    def test_a_subgraph_node_routes_its_parent(self, mode: str) -> None:
        """Command(graph=Command.PARENT, goto=..., update=...) from a node of a subgraph:
        the parent's subgraph node returns it, so the parent goes to ``billing`` with the
        update; the subgraph's own later steps do not run."""
        g = Graph(Desk)
        g.add_node("desk", desk_graph(), destinations=("billing",))
        g.add_node("billing", billing, lane="thread")
        g.add_edge(START, "desk")
        g.add_edge("billing", END)
        app = g.compile()
        out = app.invoke({"request": "refund please", "log": []}, mode=mode)
        assert out["log"] == ["to billing", "billing"]
        stays = app.invoke({"request": "hours?", "log": []}, mode=mode)
        assert stays["log"] == ["answered"]

    @pytest.mark.parametrize("lane", ["thread", "cpu"])
    def test_handing_to_the_parent_is_no_failure(self, lane: str) -> None:
        """The subgraph's node that returns Command.PARENT is not a failed node: no
        ``node_failed`` line, no NodeFailed event, no error handler, no retry; the
        parent routes on it, natively and under engine.langgraph."""
        from structlog.testing import capture_logs

        from engine import RetryPolicy
        from engine import langgraph as lg
        from engine.events import NodeFailed

        handled: list[Any] = []
        retry = RetryPolicy(max_attempts=3, retry_on=Exception)
        for builder, retry_kw in ((Graph, "retry"), (lg.StateGraph, "retry_policy")):
            inner = builder(Desk)
            inner.add_node(
                "triage",
                triage,
                lane=lane,
                error_handler=lambda state, error: handled.append(error) or {},
                **{retry_kw: retry},
            )
            inner.add_edge(START, "triage")
            g = builder(Desk)
            g.add_node("desk", inner.compile(), destinations=("billing",))
            g.add_node("billing", billing)
            g.add_edge(START, "desk")
            app = g.compile()
            seen: list[Any] = []
            with capture_logs() as logs:
                out = app.invoke({"request": "refund please", "log": []}, on_event=seen.append)
            assert out["log"] == ["to billing", "billing"]
            assert [e for e in logs if "fail" in e["event"] or e["log_level"] == "error"] == []
            assert not [e for e in seen if isinstance(e, NodeFailed)]
            assert handled == []

    def test_on_its_own_a_parent_command_is_an_error(self) -> None:
        """The same graph run on its own has no parent to go to: an InvalidUpdateError."""
        with pytest.raises(InvalidUpdateError, match="runs on its own"):
            desk_graph().invoke({"request": "refund", "log": []})


# -- config -------------------------------------------------------------------------------


class Seen(TypedDict):
    seen: Annotated[list[Any], operator.add]


def look(state: Seen, config: dict[str, Any]) -> dict[str, Any]:
    configurable = config["configurable"]
    return {"seen": [(configurable.get("user"), configurable.get("checkpoint_ns"))]}


class TestConfig:
    def test_native_subgraph_nodes_see_the_parent_config(self) -> None:
        """A subgraph run given no config takes its calling task's: the caller's keys."""
        inner = Graph(Seen)
        inner.add_node("look", look)
        inner.add_edge(START, "look")
        outer = Graph(Seen)
        outer.add_node("team", inner.compile())
        outer.add_edge(START, "team")
        out = outer.compile().invoke({"seen": []}, config={"configurable": {"user": "u1"}})
        assert [user for user, _ in out["seen"]] == ["u1"]

    def test_langgraph_subgraph_task_config_is_namespaced(self) -> None:
        """Under engine.langgraph a subgraph node's ``checkpoint_ns`` is its calling
        task's, then its own (``team:<id>|look:<id>``), with the parent's thread."""
        from engine.langgraph import InMemorySaver, StateGraph

        inner = StateGraph(Seen)
        inner.add_node("look", look)
        inner.add_edge(START, "look")
        outer = StateGraph(Seen)
        outer.add_node("team", inner.compile())
        outer.add_edge(START, "team")
        app = outer.compile(checkpointer=InMemorySaver())
        config = {"configurable": {"thread_id": "t", "user": "u2"}}
        ((user, ns),) = app.invoke({"seen": []}, config)["seen"]
        assert user == "u2"
        team, mine = ns.split("|")
        assert team.startswith("team:") and mine.startswith("look:")


class Grading(TypedDict):
    text: str
    grade: str


class Verdict(TypedDict):
    verdict: str


def prep(state: Grading) -> dict[str, Any]:
    CALLS["prep"] += 1
    return {"text": state["text"] + "!"}


def grade(state: Grading) -> dict[str, Any]:
    CALLS["grade"] += 1
    return {"grade": interrupt({"q": state["text"]})}


class TestNodeInvokingAnInterruptingGraph:
    def test_the_question_stops_the_parent_and_the_answer_resumes_the_inner_graph(
        self,
    ) -> None:
        """Under engine.langgraph, a node calling ``grader.invoke(...)`` whose graph asks a
        question: the parent stops on it, get_state(subgraphs=True) shows the grader's
        state in the node's task, and the answer resumes the grader where it stopped."""
        from engine.langgraph import InMemorySaver, StateGraph

        inner = StateGraph(Grading)
        inner.add_node("prep", prep)
        inner.add_node("grade", grade)
        inner.add_edge(START, "prep")
        inner.add_edge("prep", "grade")
        grader = inner.compile()

        def judge(state: Verdict) -> dict[str, Any]:
            return {"verdict": grader.invoke({"text": "x", "grade": ""})["grade"]}

        outer = StateGraph(Verdict)
        outer.add_node("judge", judge)
        outer.add_edge(START, "judge")
        app = outer.compile(checkpointer=InMemorySaver())
        config = {"configurable": {"thread_id": "t"}}
        asked = app.invoke({"verdict": ""}, config)["__interrupt__"]
        assert [q.value for q in asked] == [{"q": "x!"}]
        (task,) = app.get_state(config, subgraphs=True).tasks
        assert task.state.values == {"text": "x!", "grade": ""}
        items = list(app.stream(Command(resume="A"), config, stream_mode="updates", subgraphs=True))
        assert [(len(ns), list(update)) for ns, update in items] == [(1, ["grade"]), (0, ["judge"])]
        assert items[0][0] == (f"judge:{task.id}",)
        assert Counter({"prep": 1, "grade": 2}) == CALLS


# -- several questions inside one subgraph ---------------------------------------------


def _several_questions_in_one_subgraph(framework: str, depth: int) -> list[Any]:
    """One program under ``langgraph`` or ``engine.langgraph``: a subgraph (added as a
    node; ``depth`` 2: inside another subgraph) whose two nodes ask in the same step beside
    one that finishes; answered by one id, then the other; on a second thread, both in
    one resume."""
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

    def asking(name: str) -> Any:
        def node(state: Claim) -> dict[str, Any]:
            calls[name] += 1
            return {"trail": [f"{name}={ask(f'{name}?')}"]}

        return node

    def quiet(state: Claim) -> dict[str, Any]:
        calls["quiet"] += 1
        return {"trail": ["quiet"]}

    inner = StateGraph(Claim)
    for name, fn in (("budget", asking("budget")), ("legal", asking("legal")), ("quiet", quiet)):
        inner.add_node(name, fn)
        inner.add_edge(START, name)
    team = inner.compile()
    if depth == 2:
        middle = StateGraph(Claim)
        middle.add_node("inner", team)
        middle.add_edge(START, "inner")
        team = middle.compile()
    outer = StateGraph(Claim)
    outer.add_node("team", team)
    outer.add_edge(START, "team")
    app = outer.compile(checkpointer=InMemorySaver())
    seen: list[Any] = []
    cfg: Any = {"configurable": {"thread_id": "one-by-one"}}
    out = app.invoke({"claim": "x", "trail": []}, cfg)
    ids = {q.value: q.id for q in out["__interrupt__"]}
    snap = app.get_state(cfg)
    seen.append(sorted(ids))
    seen.append(sorted((q.value, q.id == ids[q.value]) for q in snap.interrupts))
    seen.append([(t.name, sorted(q.value for q in t.interrupts)) for t in snap.tasks])
    out = app.invoke(Cmd(resume={ids["budget?"]: "10k"}), cfg)
    seen.append(out["trail"])
    seen.append([(q.value, q.id == ids[q.value]) for q in out["__interrupt__"]])
    out = app.invoke(Cmd(resume={ids["legal?"]: "fine"}), cfg)
    seen.append((sorted(out["trail"]), "__interrupt__" in out))
    seen.append(sorted(calls.items()))
    calls.clear()
    cfg = {"configurable": {"thread_id": "together"}}
    out = app.invoke({"claim": "y", "trail": []}, cfg)
    ids = {q.value: q.id for q in out["__interrupt__"]}
    out = app.invoke(Cmd(resume={ids["budget?"]: "5k", ids["legal?"]: "ok"}), cfg)
    seen.append((sorted(out["trail"]), "__interrupt__" in out))
    seen.append(sorted(calls.items()))
    return seen


@pytest.mark.parametrize("depth", [1, 2])
def test_several_questions_in_one_subgraph_as_langgraph(depth: int) -> None:
    """Side by side: the parent shows every question asked inside its subgraph (one
    nested in another too), with their own ids; an answer by id reaches its node; the
    other question stays open with its id; the node that finished does not run again."""
    pytest.importorskip("langgraph")
    theirs = _several_questions_in_one_subgraph("langgraph", depth)
    assert _several_questions_in_one_subgraph("engine", depth) == theirs
    assert theirs[0] == ["budget?", "legal?"]
    assert theirs[2] == [("team", ["budget?", "legal?"])]
    assert theirs[4] == [("legal?", True)]
    assert theirs[5] == (["budget=10k", "legal=fine", "quiet"], False)
    assert theirs[6] == [("budget", 2), ("legal", 3), ("quiet", 1)]
    assert theirs[7] == (["budget=5k", "legal=ok", "quiet"], False)
    assert theirs[8] == [("budget", 2), ("legal", 2), ("quiet", 1)]


def ask_in_worker(state: Claim) -> dict[str, Any]:
    return {"trail": [f"cpu={interrupt('cpu?')}@{'worker' if os.getpid() != DRIVER else 'driver'}"]}


def ask_in_thread(state: Claim) -> dict[str, Any]:
    CALLS["thread"] += 1
    return {"trail": [f"thread={interrupt('thread?')}"]}


#: The pid of the process that runs the tests (a cpu-lane worker has another).
DRIVER = os.getpid()


def two_askers_app(store: Any) -> Any:
    inner = Graph(Claim)
    inner.add_node("cpu", ask_in_worker, lane="cpu")
    inner.add_node("thread", ask_in_thread, lane="thread")
    inner.add_node("intake", intake, lane="thread")
    for name in ("cpu", "thread", "intake"):
        inner.add_edge(START, name)
    outer = Graph(Claim)
    outer.add_node("team", inner.compile())
    outer.add_edge(START, "team")
    return outer.compile(store)


class TestSeveralQuestionsInOneSubgraph:
    async def test_a_cpu_node_and_a_thread_node_asking_in_parallel_mode(self, store: Any) -> None:
        """A cpu-lane node (in a worker process) and a thread-lane node of one subgraph ask
        in the same step: the parent stops on both, with their ids (every store); each
        answer by id reaches its node, the unanswered one stays open with its id, and the
        node that finished inside the subgraph never runs again."""
        app = two_askers_app(store)
        thread = f"t-{uuid.uuid4().hex[:8]}"
        first = await app.arun({"claim": "c", "trail": []}, thread_id=thread, mode="parallel")
        ids = {q.value: q.id for q in first.interrupts}
        assert sorted(ids) == ["cpu?", "thread?"]
        snap = await app.aget_state(thread)
        assert {q.value: q.id for q in snap.interrupts} == ids
        (task,) = snap.tasks
        assert {q.value: q.id for q in task.interrupts} == ids

        second = await app.arun(
            Command(resume={ids["cpu?"]: "fast"}), thread_id=thread, mode="parallel"
        )
        assert [(q.value, q.id) for q in second.interrupts] == [("thread?", ids["thread?"])]
        done = await app.arun(
            Command(resume={ids["thread?"]: "slow"}), thread_id=thread, mode="parallel"
        )

        assert not done.interrupted
        assert sorted(done.state["trail"]) == ["cpu=fast@worker", "intake", "thread=slow"]
        assert Counter({"intake": 1, "thread": 3}) == CALLS

    @pytest.mark.parametrize("mode", MODES)
    async def test_a_bare_answer_with_two_questions_open_is_refused(self, mode: str) -> None:
        """With both of the subgraph's questions open, a bare answer cannot say which it
        answers: a RuntimeError naming both ids (as LangGraph refuses it)."""
        app = two_askers_app(MemoryCheckpointer())
        first = await app.arun({"claim": "c", "trail": []}, thread_id="t", mode=mode)
        with pytest.raises(RuntimeError, match="2 open interrupts") as caught:
            await app.arun(Command(resume="both?"), thread_id="t", mode=mode)
        assert all(q.id in str(caught.value) for q in first.interrupts)
