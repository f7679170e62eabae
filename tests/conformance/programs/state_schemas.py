"""One graph over TypedDict, dataclass and pydantic state: what nodes get, what invoke returns."""

import operator
from dataclasses import dataclass, field
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, field_validator


class TDState(TypedDict):
    name: str
    tags: Annotated[list[str], operator.add]
    score: int


@dataclass
class DCState:
    name: str
    tags: Annotated[list[str], operator.add] = field(default_factory=list)
    score: int = 0


class PDState(BaseModel):
    name: str
    tags: Annotated[list[str], operator.add] = []
    score: int = 0

    @field_validator("name")
    @classmethod
    def no_blank_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name must not be blank")
        return value


SEEN: list[tuple] = []


def read(state, key):
    return state[key] if isinstance(state, dict) else getattr(state, key)


def label(state) -> dict:
    SEEN.append(("label", type(state).__name__, read(state, "name"), list(read(state, "tags"))))
    return {"tags": [read(state, "name").lower()]}


def score(state) -> dict:
    SEEN.append(("score", type(state).__name__, read(state, "score")))
    return {"score": len(read(state, "tags")) * 10}


def build(schema):
    builder = StateGraph(schema)
    builder.add_node("label", label)
    builder.add_node("score", score)
    builder.add_edge(START, "label")
    builder.add_edge("label", "score")
    builder.add_edge("score", END)
    return builder.compile()


GRAPHS = {"typeddict": build(TDState), "dataclass": build(DCState), "pydantic": build(PDState)}


def scenario(rec):
    for kind, graph in GRAPHS.items():
        rec(f"{kind}: invoke dict", graph.invoke({"name": "Ada", "tags": ["x"], "score": 1}))
        # TypedDict has no defaults: the score node's state["score"] is a KeyError.
        rec.call(f"{kind}: invoke partial dict", graph.invoke, {"name": "Bo"})
        rec.stream(f"{kind}: stream values", graph.stream({"name": "Cy"}, stream_mode="values"))
        rec.stream(f"{kind}: stream updates", graph.stream({"name": "Cy"}, stream_mode="updates"))
    rec("dataclass: invoke instance", GRAPHS["dataclass"].invoke(DCState(name="Dee", tags=["y"])))
    rec("pydantic: invoke instance", GRAPHS["pydantic"].invoke(PDState(name="Eve", tags=["z"])))
    rec.call("pydantic: invalid input", GRAPHS["pydantic"].invoke, {"name": "   "})
    rec.call("pydantic: wrong type", GRAPHS["pydantic"].invoke, {"name": "Fay", "score": "high"})
    rec.call(
        "typeddict: wrong type passes", GRAPHS["typeddict"].invoke, {"name": "Gus", "score": "high"}
    )
    rec("nodes saw", SEEN)
