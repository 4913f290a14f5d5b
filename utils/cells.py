"""Writing a class across several notebook cells (d2l's `add_to_class` idiom).

A chapter defines a class with its first methods in one cell, then adds the next methods in the
cells that explain them: `@add_to_class(Value)` above a `def` makes it a method of `Value` (and of
every object already made from it), so each cell stays short and can be edited and re-run alone.
"""
from __future__ import annotations

from typing import Any, Callable


def add_to_class(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: attach the decorated function to `cls` as a method of the same name."""
    def attach(function: Callable[..., Any]) -> Callable[..., Any]:
        setattr(cls, function.__name__, function)
        return function
    return attach
