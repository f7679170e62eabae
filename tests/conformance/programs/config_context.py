"""Routing by config["configurable"] and by context_schema + Runtime; what a node sees in config."""

from dataclasses import dataclass
from typing import TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime


@dataclass
class Context:
    user_name: str
    premium: bool = False


class State(TypedDict):
    request: str
    route: str
    reply: str


# What each node saw, in call order: module-level side effects of sync nodes still happen.
SEEN: list[dict] = []


def visible(config: RunnableConfig) -> dict:
    return {
        "configurable": {
            k: v
            for k, v in config["configurable"].items()
            if not k.startswith("__") and k != "checkpoint_map"
        },
        "tags": config.get("tags"),
        "metadata": config.get("metadata"),
        "recursion_limit": config.get("recursion_limit", "absent"),
        "run_name": config.get("run_name", "absent"),
        "keys": sorted(config),
    }


def triage(state: State, config: RunnableConfig) -> dict:
    SEEN.append({"node": "triage", **visible(config)})
    tier = config["configurable"].get("tier", "free")
    return {"route": "fast" if tier == "gold" else "slow"}


def by_tier(state: State, config: RunnableConfig) -> str:
    return state["route"]


def fast(state: State, runtime: Runtime[Context]) -> dict:
    SEEN.append({"node": "fast", "context": runtime.context})
    return {"reply": f"right away, {runtime.context.user_name}"}


def slow(state: State, runtime: Runtime[Context]) -> dict:
    SEEN.append({"node": "slow", "context": runtime.context})
    extra = " (premium)" if runtime.context and runtime.context.premium else ""
    name = runtime.context.user_name if runtime.context else "guest"
    return {"reply": f"in a while, {name}{extra}"}


builder = StateGraph(State, context_schema=Context)
builder.add_node("triage", triage)
builder.add_node("fast", fast)
builder.add_node("slow", slow)
builder.add_edge(START, "triage")
builder.add_conditional_edges("triage", by_tier, ["fast", "slow"])
builder.add_edge("fast", END)
builder.add_edge("slow", END)
graph = builder.compile()
saved = builder.compile(checkpointer=InMemorySaver())

INPUT = {"request": "help", "route": "", "reply": ""}


def scenario(rec):
    rec("gold", graph.invoke(INPUT, {"configurable": {"tier": "gold"}}, context=Context("ada")))
    rec("free, premium context", graph.invoke(INPUT, context=Context("bob", premium=True)))
    rec("no context", graph.invoke(INPUT))
    rec(
        "full config",
        saved.invoke(
            INPUT,
            {
                "configurable": {"thread_id": "th-1", "tier": "gold", "user_id": 7},
                "tags": ["support", "beta"],
                "metadata": {"team": "blue"},
                "run_name": "support-run",
                "recursion_limit": 9,
                "max_concurrency": 2,
            },
            context=Context("cy"),
        ),
    )
    rec("context as a dict", graph.invoke(INPUT, context={"user_name": "dee"}))
    rec("seen by nodes", SEEN)
