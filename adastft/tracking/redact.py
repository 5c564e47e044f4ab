"""What a config becomes on its way to MLflow: flattened to dotted params, and with every secret
replaced by ``"***"``, in params, tags, text artifacts, log messages and error texts.

Example::

    secrets = environment_secrets()  # values of $AWS_SECRET_ACCESS_KEY, $HF_TOKEN, ...
    flatten({"storage": {"db_password": "x", "url": "s3://b"}})  # {"storage.db_password": "x", ...}
    redact("storage.db_password", "x", secrets)  # "***"
    redact_text("http://me:pw@host:5000")  # "http://me:***@host:5000"
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REDACTED = "***"
# Secret-looking parameter names ("aws_secret_access_key", "hf.token", "db_password", "api_key")
# but not "max_tokens" or "tokenizer".
_SECRET_PARAM = re.compile(
    r"(^|[._-])(secret|token|password|passwd|credentials?)($|[._-])|(api|access|private|secret)[_-]?key",
    re.IGNORECASE,
)
# Environment variables whose values are secrets: a whole "_"-separated word of the name, so
# AWS_SECRET_ACCESS_KEY and HF_TOKEN count and TOKENIZERS_PARALLELISM does not.
_SECRET_ENV = re.compile(r"(^|_)(SECRET|TOKEN|PASSWORD|PASSWD|KEY|APIKEY|CREDENTIALS?)(_|$)", re.IGNORECASE)
# Values too short or too common to redact without mangling every param ("1", "true").
_MIN_SECRET_LENGTH = 4
_NOT_SECRETS = {"true", "false", "none", "null", "yes", "no"}
# Credentials in a URI's userinfo: http://user:PASSWORD@host, https://TOKEN@host.
_URI_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^/?#@\s]+)@")
# Text artifacts that are redacted like params before upload; larger ones are sent as they are.
_TEXT_SUFFIXES = {".yaml", ".yml", ".json", ".csv", ".txt", ".log", ".md", ".cfg", ".ini", ".toml"}
_MAX_REDACTED_BYTES = 50_000_000


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys: ``{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": "[1, 2]"}``.

    Lists and tuples become their ``repr``; an empty mapping stays as ``"{}"`` under its key.
    """
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        elif isinstance(value, Mapping):
            out[name] = "{}"
        elif isinstance(value, (list, tuple)):
            out[name] = repr(value)
        else:
            out[name] = value
    return out


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables named like secrets, longest first (for substring redaction)."""
    environ = os.environ if environ is None else environ
    values = {
        value
        for name, value in environ.items()
        if _SECRET_ENV.search(name) and len(value) >= _MIN_SECRET_LENGTH and value.lower() not in _NOT_SECRETS
    }
    return sorted(values, key=len, reverse=True)


def redact(key: str, value: str, secrets: Iterable[str]) -> str:
    """``"***"`` for a secret-looking key; otherwise ``value`` redacted by :func:`redact_text`."""
    if _SECRET_PARAM.search(key):
        return REDACTED
    return redact_text(value, secrets)


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret substring (default: :func:`environment_secrets`) and the
    password of every URI's userinfo replaced: ``http://me:***@host``, ``https://***@host``."""
    for secret in environment_secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _URI_USERINFO.sub(_mask_userinfo, text)


def _mask_userinfo(match: re.Match) -> str:
    user, password = match[2].split(":", 1) if ":" in match[2] else (None, match[2])
    return f"{match[1]}{user}:{REDACTED}@" if user is not None else f"{match[1]}{REDACTED}@"


def short_error(err: BaseException) -> str:
    """The first line of ``err``, redacted, at most 200 characters: for one-line warnings."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    text = redact_text(text)
    return text if len(text) <= 200 else text[:200] + "..."


class RedactingFilter(logging.Filter):
    """Redacts every message of the logger it filters, like ours: for a library's logger whose
    messages name the tracking URI, password included."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage()), None
        return True


def redacted_copy(path: Path, tmp: Path, secrets: list[str]) -> Path:
    """``path`` (a file or a folder) itself when none of its text files holds a secret, else a
    copy in ``tmp`` with those files redacted by :func:`redact_text`."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())

    def clean(f: Path) -> str | None:
        if f.suffix.lower() not in _TEXT_SUFFIXES or f.stat().st_size > _MAX_REDACTED_BYTES:
            return None
        try:
            text = f.read_text()
        except (UnicodeDecodeError, OSError):
            return None
        redacted = redact_text(text, secrets)
        return redacted if redacted != text else None

    changed = {f: text for f in files if (text := clean(f)) is not None}
    if not changed:
        return path
    out = tmp / path.name
    if path.is_file():
        out.write_text(changed[path])
        return out
    shutil.copytree(path, out)
    for f, text in changed.items():
        (out / f.relative_to(path)).write_text(text)
    return out
