"""Logging for service entry points: one format, and a filter that redacts bearer tokens.

Nothing in attestd logs tokens or secrets on purpose; the filter is defence in
depth against a library or a future message echoing an ``Authorization`` header.
"""

from __future__ import annotations

import logging
import re

_TOKEN = re.compile(r"\b(at[oh]_)[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")


class RedactTokens(logging.Filter):
    """Replace attestd bearer tokens (and any ``Bearer xxx``) in a record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _BEARER.sub(r"\1[redacted]", _TOKEN.sub(r"\1[redacted]", message))
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure(level: str = "INFO") -> None:
    """Root logging to stderr with the redaction filter (call once, from an entry point)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(RedactTokens())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
