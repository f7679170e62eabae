"""A message-list reducer, ``add_messages``, and ``MessagesState``: chat history as state.

::

    class State(MessagesState):            # messages: Annotated[list, add_messages]
        topic: str

    def agent(state) -> dict:
        return {"messages": [("assistant", "hello")]}     # appended, with a fresh id

``add_messages(current, new)`` appends the new messages; a message whose id
is already in the list replaces that one in place; ``RemoveMessage(id=...)``
deletes one (``RemoveMessage(id=REMOVE_ALL_MESSAGES)`` all those before it).
Messages without an id get a fresh ``uuid4`` string id.

With langchain-core installed (it comes with ``engine[langgraph]``) the
messages are its classes (``HumanMessage``, ``AIMessage``, ``ToolMessage``,
``RemoveMessage``...), and ``("user", "hi")`` tuples, strings and
``{"role": ..., "content": ...}`` dicts are converted by langchain-core.
Without it they are this module's own frozen :class:`Message` records.
langchain-core is never imported here until a message needs converting.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Annotated, Any, TypedDict

#: A ``RemoveMessage`` with this id deletes every message before it.
REMOVE_ALL_MESSAGES = "__remove_all__"

#: Roles a ``(role, content)`` tuple may name, and the role a Message records.
_ROLES = {
    "human": "human",
    "user": "human",
    "ai": "ai",
    "assistant": "ai",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "function",
}


@dataclass(frozen=True)
class Message:
    """A chat message when langchain-core is not installed: who said what, with an id."""

    role: str
    content: Any
    id: str | None = None
    name: str | None = None
    #: Tool-call bookkeeping and the like, as plain data.
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoveMessage:
    """Deletes the message with this id when returned to an ``add_messages`` channel."""

    id: str


def _langchain() -> ModuleType | None:
    """``langchain_core.messages`` when it can be imported, else None."""
    loaded = sys.modules.get("langchain_core.messages")
    if loaded is not None:
        return loaded
    try:
        import langchain_core.messages as lc
    except ImportError:
        return None
    return lc


def _is_remove(message: object, lc: ModuleType | None) -> bool:
    if isinstance(message, RemoveMessage):
        return True
    return lc is not None and isinstance(message, lc.RemoveMessage)


def _native(item: object) -> Message:
    if isinstance(item, Message):
        return item
    if isinstance(item, str):
        return Message("human", item)
    if isinstance(item, tuple) and len(item) == 2:
        role, content = item
        if role not in _ROLES:
            raise ValueError(
                f"unknown message role {role!r}; use one of {', '.join(sorted(_ROLES))}"
            )
        return Message(_ROLES[role], content)
    if isinstance(item, Mapping):
        data = dict(item)
        role = data.pop("role", data.pop("type", None))
        if role not in _ROLES:
            raise ValueError(f"a message dict needs a known 'role', got {role!r}")
        content = data.pop("content", "")
        return Message(_ROLES[role], content, data.pop("id", None), data.pop("name", None), data)
    raise TypeError(
        f"cannot make a message of a {type(item).__name__}; give a message, a (role, text) "
        "tuple, a string, or a dict with 'role' and 'content'"
    )


def as_messages(value: object) -> list[Any]:
    """``value`` (a list of message-like items, or one) as a list of messages.

    Messages are kept as they are (a chunk becomes its whole message);
    tuples, strings and dicts are converted: by langchain-core when it is
    installed, else into :class:`Message`.
    """
    items = list(value) if isinstance(value, list) else [value]
    lc = _langchain()
    out: list[Any] = []
    for item in items:
        if isinstance(item, Message | RemoveMessage):
            out.append(item)
        elif lc is not None:
            if not isinstance(item, lc.BaseMessage):
                (item,) = lc.convert_to_messages([item])
            if isinstance(item, lc.BaseMessageChunk):
                item = lc.message_chunk_to_message(item)
            out.append(item)
        else:
            out.append(_native(item))
    return out


def _with_id(message: Any) -> Any:
    """``message`` with an id: a fresh uuid4 string when it has none.

    A langchain message gets its id in place (LangGraph does the same, so a
    streamed message and the stored one share it); a frozen Message is copied.
    """
    if getattr(message, "id", None) is not None:
        return message
    fresh = str(uuid.uuid4())
    if dataclasses.is_dataclass(message) and not isinstance(message, type):
        return dataclasses.replace(message, id=fresh)
    message.id = fresh
    return message


def add_messages(left: object, right: object) -> list[Any]:
    """Merge two message lists: append, replace by id, remove with ``RemoveMessage``.

    Returns a new list (neither argument is changed, but id-less messages
    get their ids in place). Raises ValueError for a ``RemoveMessage`` whose
    id is in neither list.
    """
    current = [_with_id(m) for m in as_messages(left if left is not None else [])]
    new = [_with_id(m) for m in as_messages(right if right is not None else [])]
    lc = _langchain()
    cut = max(
        (i for i, m in enumerate(new) if _is_remove(m, lc) and m.id == REMOVE_ALL_MESSAGES),
        default=None,
    )
    if cut is not None:
        return new[cut + 1 :]
    merged = list(current)
    where = {m.id: i for i, m in enumerate(merged)}
    removed: set[str] = set()
    for message in new:
        at = where.get(message.id)
        if _is_remove(message, lc):
            if at is None:
                raise ValueError(
                    f"RemoveMessage(id={message.id!r}) names no message in the list; remove "
                    "only ids the state holds"
                )
            removed.add(message.id)
        elif at is None:
            where[message.id] = len(merged)
            merged.append(message)
        else:
            merged[at] = message
            removed.discard(message.id)
    return [m for m in merged if m.id not in removed]


class MessagesState(TypedDict):
    """A state holding a chat history; subclass it to add keys."""

    messages: Annotated[list[Any], add_messages]


__all__ = [
    "REMOVE_ALL_MESSAGES",
    "Message",
    "MessagesState",
    "RemoveMessage",
    "add_messages",
    "as_messages",
]
