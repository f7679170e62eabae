"""Chatbot with a tool router: the add_messages reducer and the messages stream mode.

add_messages appends, replaces by id and removes (RemoveMessage); a rule-based
chat model stands in for an LLM and streams its tokens through LangChain's
callbacks, as a real chat model does.
"""

import re
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    AnyMessage,
    HumanMessage,
    RemoveMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.graph import END, START, StateGraph, add_messages


class RuleChatModel(BaseChatModel):
    """A deterministic stand-in for an LLM: asks for a tool once, then answers with its result."""

    @property
    def _llm_type(self) -> str:
        return "rule-chat"

    def _reply(self, messages: list[Any]) -> AIMessage:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            return AIMessage(content=f"The answer is {last.content}.")
        expression = re.sub(r"[^0-9*+ -]", "", last.content).strip()
        return AIMessage(
            content="Let me compute that.",
            tool_calls=[{"name": "calculator", "args": {"expression": expression}, "id": "call_1"}],
        )

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    def _stream(
        self, messages, stop=None, run_manager=None, **kwargs
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._reply(messages)
        for token in re.split(r"(\s)", reply.content):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=token))
            if run_manager:
                run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk
        for index, call in enumerate(reply.tool_calls):
            chunk = ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    tool_call_chunks=[
                        {
                            "name": call["name"],
                            "args": repr(call["args"]).replace("'", '"'),
                            "id": call["id"],
                            "index": index,
                        }
                    ],
                )
            )
            if run_manager:
                run_manager.on_llm_new_token("", chunk=chunk)
            yield chunk


model = RuleChatModel()


def calculator(expression: str) -> str:
    left, op, right = expression.split()
    return str({"*": int(left) * int(right), "+": int(left) + int(right)}[op])


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    turns: int


def agent(state: State) -> dict:
    response = model.invoke(state["messages"])
    return {"messages": [response], "turns": state.get("turns", 0) + 1}


def tools(state: State) -> dict:
    last = state["messages"][-1]
    results = [
        ToolMessage(content=calculator(**call["args"]), tool_call_id=call["id"], name=call["name"])
        for call in last.tool_calls
    ]
    return {"messages": results}


def route(state: State) -> str:
    last = state["messages"][-1]
    return "tools" if getattr(last, "tool_calls", None) else "tidy"


def tidy(state: State) -> dict:
    # Replace the question by id, and drop the "Let me compute that." message.
    question, thinking = state["messages"][0], state["messages"][1]
    return {
        "messages": [
            HumanMessage(content=question.content.upper(), id=question.id),
            RemoveMessage(id=thinking.id),
        ]
    }


builder = StateGraph(State)
builder.add_node("agent", agent)
builder.add_node("tools", tools)
builder.add_node("tidy", tidy)
builder.add_edge(START, "agent")
builder.add_conditional_edges("agent", route, ["tools", "tidy"])
builder.add_edge("tools", "agent")
builder.add_edge("tidy", END)
graph = builder.compile()


def scenario(rec):
    question = {"messages": [HumanMessage(content="what is 6 * 7?", id="q1")]}
    rec("invoke", graph.invoke(question))
    rec(
        "invoke with a (role, text) tuple", graph.invoke({"messages": [("user", "what is 2 + 3?")]})
    )
    rec.stream("stream updates", graph.stream(question, stream_mode="updates"))
    rec.stream("stream messages", graph.stream(question, stream_mode="messages"))
    rec.stream(
        "stream [messages, updates]",
        graph.stream(question, stream_mode=["messages", "updates"]),
    )
    rec.stream(
        "stream messages, tags and metadata",
        graph.stream(
            question,
            {"tags": ["chat"], "metadata": {"user": "ada"}, "run_name": "chatbot"},
            stream_mode="messages",
        ),
    )
