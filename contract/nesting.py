"""How deep a request's JSON nests, found without recursion: a body or a batch line nested
thousands deep fails as itself (a 400, one failed row), never as a `RecursionError` that
takes a handler or a whole batch run down with it."""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32  # levels of arrays and objects; a request's deepest field (lora: objects in a list) has 3


class TooDeep(ValueError):
    def __init__(self):
        super().__init__(f"nested deeper than {MAX_DEPTH} levels of arrays and objects")


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def loads(text: str | bytes) -> Any:
    """`json.loads`, refusing a document nested deeper than `MAX_DEPTH` with `TooDeep` (other
    errors as `json.JSONDecodeError`)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep from None
    if too_deep(value):
        raise TooDeep
    return value
