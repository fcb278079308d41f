"""Structured logging: one JSON object per line on stderr.

Every record carries ts (UTC, ISO 8601, ms), level, logger, msg, plus whatever the call site put in
`extra=` (request_id, policy, elapsed_us, ...), and `exc` with the traceback when there is one:

    log.info("rerank", extra={"request_id": "r1", "policy": "home_feed", "elapsed_us": {...}})
    {"ts": "2024-05-01T12:00:00.123Z", "level": "INFO", "logger": "server.servicer", "msg": "rerank",
     "request_id": "r1", "policy": "home_feed", "elapsed_us": {...}}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

#: Limits of one log line: a field's text (the message included), entries of a list / mapping,
#: nesting depth, and the whole line. One 15.9 MiB request once became a 16.7 MB line.
MAX_FIELD_CHARS = 1000
MAX_ITEMS = 20
MAX_DEPTH = 4
MAX_LINE_CHARS = 8192
#: The traceback may be longer than a field (it is what a bug report needs), but bounded too.
MAX_TRACEBACK_CHARS = 6000

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out["msg"] = clip(out["msg"])
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[clip(str(key), 100)] = clip(value)
        if record.exc_info:
            out["exc"] = _clip_text(self.formatException(record.exc_info), MAX_TRACEBACK_CHARS)
        elif record.exc_text:
            out["exc"] = _clip_text(record.exc_text, MAX_TRACEBACK_CHARS)
        if record.stack_info:
            out["stack"] = _clip_text(self.formatStack(record.stack_info), MAX_TRACEBACK_CHARS)
        line = json.dumps(out, default=str, ensure_ascii=False)
        if len(line) <= MAX_LINE_CHARS:
            return line
        # still too long (many fields): keep the envelope, clip every field harder
        small = {k: (v if k in ("ts", "level", "logger") else clip(v, 200, 5, 2)) for k, v in out.items()}
        line = json.dumps(small, default=str, ensure_ascii=False)
        if len(line) <= MAX_LINE_CHARS:
            return line
        return json.dumps({k: out[k] for k in ("ts", "level", "logger")} | {
            "msg": _clip_text(out["msg"], 500), "clipped": f"log line of {len(line)} chars dropped"},
            ensure_ascii=False)


def _clip_text(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(clipped, {len(text)} chars)"


def clip(value, limit: int = MAX_FIELD_CHARS, items: int = MAX_ITEMS, depth: int = MAX_DEPTH):
    """A logged value made small: strings and bytes cut to `limit` characters, lists, tuples,
    sets and mappings to `items` entries (saying how many there were), nesting to `depth`;
    anything else through str() when its text is long. Numbers, bools and None unchanged."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _clip_text(value, limit)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if depth <= 0:
        return _clip_text(repr(value), min(limit, 200))
    if isinstance(value, dict):
        keys = list(value)[:items]
        out = {clip(str(k), 100): clip(value[k], limit, items, depth - 1) for k in keys}
        if len(value) > items:
            out["..."] = f"clipped, {len(value)} entries"
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        seq = list(value)
        out = [clip(v, limit, items, depth - 1) for v in seq[:items]]
        if len(seq) > items:
            out.append(f"...(clipped, {len(seq)} entries)")
        return out
    return _clip_text(str(value), limit)


class _JsonHandler(logging.StreamHandler):
    """Marker class so that configure_logging() replaces only its own handler."""


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Send every log record to `stream` (stderr) as JSON lines. Idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _JsonHandler):
            root.removeHandler(handler)
    handler = _JsonHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
