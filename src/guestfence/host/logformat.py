"""Log formats of guestfenced: the classic text lines, or one JSON object per line.

Code that logs something worth querying passes its fields as
``extra=log_fields(...)``; the text format ignores them (its lines stay exactly
as they were), the JSON format writes them as top-level members next to
``timestamp``, ``level``, ``logger`` and ``message``. Nobody passes a key:
only names, addresses, numbers and outcomes are fields.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
FIELDS_ATTR = "guestfence_fields"
RESERVED = ("timestamp", "level", "logger", "message")


def log_fields(**fields: Any) -> dict[str, Any]:
    """The ``extra`` argument of a logging call that carries structured fields."""
    return {FIELDS_ATTR: fields}


class JsonFormatter(logging.Formatter):
    """``{"timestamp": ..., "level": ..., "logger": ..., "message": ..., <fields>}``."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix  # syslog wants its tag in front of the JSON

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            for name, value in fields.items():
                # a field never hides one of the four members every line has
                out[f"field_{name}" if name in RESERVED else name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        # ensure_ascii: untrusted names with control characters stay on one line
        line = json.dumps(out, ensure_ascii=True, default=str, separators=(",", ":"))
        return self.prefix % {"process": record.process} + line if self.prefix else line
