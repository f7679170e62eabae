"""Human review of a tool call: interrupt() pauses; Command(resume=...) approves, edits, rejects."""

from typing import Literal

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command, interrupt

REVIEWS: list[str] = []  # each entry: a review node run (it re-runs on resume)


def assistant(state: MessagesState) -> dict:
    last = state["messages"][-1]
    if isinstance(last, ToolMessage):
        return {
            "messages": [
                AIMessage(content=f"Done: {last.content}", id=f"ai-{len(state['messages'])}")
            ]
        }
    return {
        "messages": [
            AIMessage(
                content="",
                id="ai-call",
                tool_calls=[
                    {
                        "name": "send_email",
                        "args": {"to": "bob@example.com", "body": "hi"},
                        "id": "call_email",
                    }
                ],
            )
        ]
    }


def human_review(state: MessagesState) -> Command[Literal["run_tool", "assistant"]]:
    call = state["messages"][-1].tool_calls[0]
    REVIEWS.append(call["id"])
    decision = interrupt({"question": "Send this email?", "tool_call": call})
    if decision["action"] == "approve":
        return Command(goto="run_tool")
    if decision["action"] == "edit":
        edited = AIMessage(
            content="",
            id="ai-call",
            tool_calls=[{**call, "args": {**call["args"], **decision["args"]}}],
        )
        return Command(goto="run_tool", update={"messages": [edited]})
    rejection = ToolMessage(
        content=f"rejected: {decision['reason']}",
        tool_call_id=call["id"],
        name=call["name"],
        id="tool-rejected",
    )
    return Command(goto="assistant", update={"messages": [rejection]})


def run_tool(state: MessagesState) -> dict:
    call = state["messages"][-1].tool_calls[0]
    result = f"emailed {call['args']['to']}: {call['args']['body']}"
    return {
        "messages": [
            ToolMessage(
                content=result, tool_call_id=call["id"], name=call["name"], id="tool-result"
            )
        ]
    }


def after_assistant(state: MessagesState) -> str:
    return "human_review" if state["messages"][-1].tool_calls else END


builder = StateGraph(MessagesState)
builder.add_node("assistant", assistant)
builder.add_node("human_review", human_review)
builder.add_node("run_tool", run_tool)
builder.add_edge(START, "assistant")
builder.add_conditional_edges("assistant", after_assistant, ["human_review", END])
builder.add_edge("run_tool", "assistant")
graph = builder.compile(checkpointer=InMemorySaver())

ASK = {"messages": [HumanMessage(content="email bob", id="human-1")]}


def scenario(rec):
    for thread, decision in [
        ("approve", {"action": "approve"}),
        ("edit", {"action": "edit", "args": {"body": "hello Bob"}}),
        ("reject", {"action": "reject", "reason": "not now"}),
    ]:
        config = {"configurable": {"thread_id": thread}}
        rec(f"{thread}: first invoke", graph.invoke(ASK, config))
        snapshot = graph.get_state(config)
        rec(f"{thread}: paused state", snapshot)
        rec(f"{thread}: interrupts", snapshot.interrupts)
        rec(f"{thread}: resume", graph.invoke(Command(resume=decision), config))
        rec(f"{thread}: final state", graph.get_state(config))

    config = {"configurable": {"thread_id": "streamed"}}
    rec.stream(
        "stream updates until the interrupt", graph.stream(ASK, config, stream_mode="updates")
    )
    rec.stream(
        "stream values until the interrupt", graph.stream(None, config, stream_mode="values")
    )
    rec.stream(
        "stream updates of the resume",
        graph.stream(Command(resume={"action": "approve"}), config, stream_mode="updates"),
    )
    rec.stream(
        "stream v2 of a new interrupt",
        graph.stream(
            ASK, {"configurable": {"thread_id": "v2"}}, stream_mode="values", version="v2"
        ),
    )
    rec(
        "invoke v2 of an interrupt",
        graph.invoke(ASK, {"configurable": {"thread_id": "v2b"}}, version="v2"),
    )
    rec("review node runs", REVIEWS)
