"""LangChain messages as the role/content dicts a tokenizer's chat template takes (text only)."""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage

logger = logging.getLogger(__name__)


def to_chat(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages to chat-template dicts, keeping only text content."""
    chat = []
    for message in messages:
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, AIMessage):
            role = "assistant"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, ChatMessage):
            role = message.role
        else:  # tool results and anything else read as user-provided text
            role = "user"
        chat.append({"role": role, "content": text_of(message.content)})
    return chat


def text_of(content: str | list[Any]) -> str:
    """The text of a message's content; other blocks (images, audio...) are dropped: text-only models."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            logger.debug("dropping non-text content block %r (text-only model)", kind)
    return "\n".join(parts)
