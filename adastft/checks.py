"""Argument checks shared by the library's classes: one message shape everywhere.

A bad argument raises ``ValueError`` whose message starts with the argument's name and ends with
the value it got, ``"n_fft must be an integer >= 2, got 1"``; :mod:`adastft.config` puts the config
key in place of the name (``stft.n_fft must be ...``), so the class that takes an argument is the
one place that checks it.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable


def need(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``."""
    if not ok:
        raise ValueError(message)


def close_match(word: Any, options: Iterable[Any]) -> str | None:
    """The option most like ``word`` (a likely typo), or ``None``."""
    if not isinstance(word, str):
        return None
    close = difflib.get_close_matches(word, [o for o in options if isinstance(o, str)], n=1)
    return close[0] if close else None


def one_of(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """``"{name} must be one of a, b, got 'x' (did you mean 'a'?)"`` unless ``value`` is allowed."""
    allowed = tuple(allowed)
    if value in allowed:
        return
    close = close_match(value, allowed)
    hint = f" (did you mean {close!r}?)" if close else ""
    raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}{hint}")
