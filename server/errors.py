"""Domain exceptions -> gRPC status: ONE table, used by every RPC and by every batch entry.

The status message starts with the field path (`field: message`, several issues joined by "; ")
and every field path is also sent as trailing metadata under `x-field` (one entry per field), so
that a client can act on it without parsing text. Anything not in the table is a bug: it is
logged with its traceback and the caller gets INTERNAL with a generic message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import quote

import grpc

from engine.errors import InvalidRequest, PolicyInvalid, PolicyNotFound, RerankError, Unavailable
from server._gen.reranker.v1 import reranker_pb2 as pb

log = logging.getLogger(__name__)

FIELD_METADATA_KEY = "x-field"
# The message travels in the grpc-message header and the fields in trailing metadata: both are
# bounded by the peer's metadata size limit (8 KiB by default), so keep them well under it.
MAX_MESSAGE_CHARS = 2000
MAX_FIELDS = 16


class DeadlineExpired(RerankError):
    """The caller's deadline had passed before the work started (raised by the server only)."""

    def __init__(self, stage: str = "solving"):
        super().__init__(f"deadline exceeded before {stage} started")


class Overloaded(RerankError):
    """Admission control refused the call: too large for this server, or its heavy lane is busy
    (raised by the server only; RESOURCE_EXHAUSTED, with the field at fault when there is one)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


# The table: first matching class wins (list subclasses before their bases).
STATUS_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (PolicyNotFound, grpc.StatusCode.NOT_FOUND),
    (PolicyInvalid, grpc.StatusCode.INVALID_ARGUMENT),
    (DeadlineExpired, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.FAILED_PRECONDITION),
)

INTERNAL_MESSAGE = "internal error; the server logged the details"


@dataclass(frozen=True, slots=True)
class ErrorStatus:
    code: grpc.StatusCode
    message: str
    fields: tuple[str, ...]  # paths of the fields at fault, most important first; may be empty

    @property
    def field(self) -> str:
        return self.fields[0] if self.fields else ""


def to_status(exc: BaseException, *, request_id: str = "", policy: str = "") -> ErrorStatus:
    """Map any exception to a status. Unknown exceptions are logged (with traceback) here."""
    for cls, code in STATUS_TABLE:
        if isinstance(exc, cls):
            status = ErrorStatus(code, _clip(str(exc)), _fields(exc))
            log.info(
                "request rejected",
                extra={"code": code.name, "field": status.field, "error": status.message,
                       "request_id": request_id, "policy": policy},
            )
            return status
    log.error(
        "unhandled error", exc_info=exc, extra={"request_id": request_id, "policy": policy}
    )
    message = f"{INTERNAL_MESSAGE} (request_id={request_id!r})" if request_id else INTERNAL_MESSAGE
    return ErrorStatus(grpc.StatusCode.INTERNAL, message, ())


def abort(context: grpc.ServicerContext, status: ErrorStatus,
          metadata: tuple[tuple[str, str], ...] = ()) -> NoReturn:
    """End the RPC with `status` (message + x-field trailing metadata, plus `metadata`, such as
    the worker's pid). Raises, as context.abort."""
    fields = tuple((FIELD_METADATA_KEY, _ascii(f)) for f in status.fields[:MAX_FIELDS])
    if fields or metadata:
        context.set_trailing_metadata(tuple(metadata) + fields)
    context.abort(status.code, status.message)
    raise AssertionError("unreachable: context.abort returned")  # pragma: no cover


def to_error_message(status: ErrorStatus) -> pb.RerankError:
    """A status as the error entry of a batch result."""
    return pb.RerankError(code=status.code.value[0], message=status.message, field=status.field)


def _fields(exc: BaseException) -> tuple[str, ...]:
    if isinstance(exc, (InvalidRequest, PolicyInvalid)):
        return tuple(dict.fromkeys(i.path for i in exc.issues if i.path))
    if isinstance(exc, PolicyNotFound):
        return ("policy",)
    if isinstance(exc, Overloaded) and exc.field:
        return (exc.field,)
    return ()


def _clip(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 20].rstrip() + " ... (truncated)"


def _ascii(path: str) -> str:
    """Metadata values must be printable ASCII: percent-encode anything else."""
    if path.isascii() and path.isprintable():
        return path
    return quote(path, safe="".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%"))
