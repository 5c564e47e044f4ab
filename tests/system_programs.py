"""Tests that need a system program (Chromium, sshd, ...): on a developer's machine without it
they skip, saying what to install; under CI (``CI=true``, as GitHub Actions, GitLab and
``.ci/run``'s callers set it) they fail instead, since ``.ci/run`` installs every one of them
and a skip there would hide a test that never ran."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require(missing: list[str], install: str, what: str = "this test") -> None:
    """Skip (fail under CI) when ``missing`` names anything: one line with the install command."""
    if not missing:
        return
    message = f"{what} needs {', '.join(missing)}: {install}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: .ci/run installs it, so it must run)", pytrace=False)
    pytest.skip(message)
