"""One trace per visitor's turn: W3C trace context carried in the envelope, spans over OTLP.

A turn's trace context is a W3C `traceparent` string (`00-<trace id>-<span id>-<flags>`). The
envelope carries it in its optional `trace` field (core/envelope.py), the mesh carries it beside
the entries a turn appended (mesh/wire.py: a T message), never inside a signed entry. While a
turn is handled, `current()` holds it (a context variable): every event the node sends then
carries it (`encode_event` reads it) and every log record gets a `trace_id` attribute, which the
journal writes as `GIBSEY_TRACE_ID` (node/gateway/journal.py).

Spans are exported only when `[telemetry] otlp_endpoint` is set (`configure`): the
OpenTelemetry SDK is imported then, not before. Off, `enabled()` is False, nothing of the SDK
exists, and callers skip their spans with one test of that flag: a rotation costs one context
variable read per event sent (see `gibsey bench vm`, the tracing rows).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, Field

from gibsey.core.config import ConfigSection
from gibsey.core.paced import PacedRecords

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("gibsey.trace")

TRACEPARENT_PATTERN = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_TRACEPARENT_RE = re.compile(TRACEPARENT_PATTERN)
TRACEPARENT_LEN = 55
ENTRY_TRACES = 1024  # entries appended by traced turns, remembered until the mesh sends them
# At a stop, the spans still pending get this long to reach the collector. The SDK's own flush
# waits out its exporter (5 s a request, retried while a collector is off; upstream issue 4568:
# force_flush ignores its timeout), and a node's stop waited 3-5 s for a collector switched off
# or silent: a stop also ends in a reboot or a restart by the watchdog.
STOP_FLUSH_S = 2.0


def valid_traceparent(value: str) -> bool:
    """A version-00 traceparent whose trace and span ids are not all zeros (W3C: invalid)."""
    return (
        len(value) == TRACEPARENT_LEN
        and _TRACEPARENT_RE.match(value) is not None
        and value[3:35] != "0" * 32
        and value[36:52] != "0" * 16
    )


def _check(value: str) -> str:
    if not valid_traceparent(value):
        raise ValueError("not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, ids not all zero)")
    return value


Traceparent = Annotated[
    str,
    Field(
        pattern=TRACEPARENT_PATTERN,
        description="W3C trace context (traceparent) of the turn this event belongs to",
    ),
    AfterValidator(_check),
]


class TelemetryConfig(ConfigSection):
    """`[telemetry]`: where spans go. No endpoint (the default): no tracing at all."""

    # The OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces (protobuf body).
    otlp_endpoint: str = Field("", pattern=r"^(https?://\S+)?$")
    # How long a finished span may wait before its batch is sent.
    export_delay_s: Annotated[float, Field(gt=0, le=60)] = 1.0


def trace_id_of(traceparent: str) -> str:
    """The 32 hex digits of the trace id."""
    return traceparent[3:35]


def new_traceparent() -> str:
    """A fresh root context (sampled), for a turn that arrives without one."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


# -- the current turn -----------------------------------------------------------------------------
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("gibsey_trace", default=None)


def current() -> str | None:
    """The traceparent of the turn being handled here, if it is traced."""
    return _current.get()


@contextlib.contextmanager
def within(traceparent: str | None) -> Iterator[None]:
    """Handle what follows as part of `traceparent`'s turn (no span)."""
    if traceparent is None:
        yield
        return
    token = _current.set(traceparent)
    try:
        yield
    finally:
        _current.reset(token)


# -- the SDK, when configured ---------------------------------------------------------------------
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_endpoint = ""  # where the spans go (said when a stop leaves some behind)
_lock = threading.Lock()
_entry_traces: OrderedDict[bytes, str] = OrderedDict()


def enabled() -> bool:
    """Whether spans are made and exported (`[telemetry] otlp_endpoint` set)."""
    return _tracer is not None


def configure(config: TelemetryConfig, service: str) -> Callable[[], None] | None:
    """Start exporting spans as `service` (the node id) when an endpoint is set; returns the
    function that flushes and stops the exporter, or None when tracing stays off. One provider
    per process: a second node in the same process shares the first's (its spans name their
    node in the `gibsey.node` attribute)."""
    global _tracer, _provider, _endpoint
    if not config.otlp_endpoint:
        return None
    with _lock:
        if _provider is None:
            # Imported here: a node without telemetry never loads the SDK.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            # No shutdown at the interpreter's exit: `shutdown` bounds its own wait, the SDK's
            # would wait for the collector again (up to 30 s).
            provider = TracerProvider(
                resource=Resource.create({"service.name": service}), shutdown_on_exit=False
            )
            exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, timeout=5)
            delay_ms = int(config.export_delay_s * 1000)
            provider.add_span_processor(
                BatchSpanProcessor(exporter, schedule_delay_millis=delay_ms)
            )
            _provider, _endpoint = provider, config.otlp_endpoint
            _tracer = provider.get_tracer("gibsey")
            _pace_library_logs()
            install_log_records()
            log.info("tracing: spans of every turn go to %s (OTLP/HTTP)", config.otlp_endpoint)
    return shutdown


# One filter for all of OpenTelemetry's loggers, added once however often tracing is configured.
_PACED = PacedRecords()


def _pace_library_logs() -> None:
    """OpenTelemetry's exporter logs every failed export (three lines every ~3 s while a
    collector is off or unreachable) and its batch processor every span it drops: each kind of
    line from its loggers is said once a minute at most (core/paced.PacedRecords)."""
    for name in list(logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        if name.startswith("opentelemetry") and _PACED not in logger.filters:
            logger.addFilter(_PACED)


def shutdown(budget_s: float = STOP_FLUSH_S) -> None:
    """Flush what is pending and stop exporting (tracing is off afterwards), waiting at most
    `budget_s` for the collector: the flush runs in a thread of its own (a daemon, so the
    process may exit while it still waits), and spans it has not exported by then are left,
    said in one line."""
    global _tracer, _provider
    with _lock:
        provider, _provider, _tracer = _provider, None, None
    if provider is None:
        return

    def flush_and_stop() -> None:
        provider.force_flush(int(budget_s * 1000))
        provider.shutdown()

    flushing = threading.Thread(target=flush_and_stop, name="trace-flush", daemon=True)
    flushing.start()
    flushing.join(budget_s)
    if flushing.is_alive():
        log.warning(
            "tracing: the last spans did not reach the collector at %s within %g s of the "
            "stop (switched off, or not answering): stopping without them",
            _endpoint,
            budget_s,
        )


@functools.lru_cache(maxsize=256)  # a turn's spans share parents: the router's, the append's
def _parent_context(traceparent: str | None) -> Any:
    """The OpenTelemetry context whose span is `traceparent` (a remote one, from an envelope
    or a mesh message), as a parent for the SDK."""
    if traceparent is None:
        return None
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    parent = SpanContext(
        int(traceparent[3:35], 16),
        int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[53:55], 16)),
    )
    return set_span_in_context(NonRecordingSpan(parent))


def _traceparent_of(sp: Span) -> str:
    ctx = sp.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


@contextlib.contextmanager
def span(
    name: str, parent: str | None = None, attributes: Mapping[str, str | int] | None = None
) -> Iterator[str | None]:
    """A span named `name`, child of `parent` (default: the current turn; neither: a new trace),
    current while the block runs; yields its traceparent. Tracing off: only `within(parent)`."""
    parent = parent or _current.get()
    tracer = _tracer
    if tracer is None:
        with within(parent):
            yield parent
        return
    sp = tracer.start_span(name, context=_parent_context(parent), attributes=attributes)
    token = _current.set(_traceparent_of(sp))
    try:
        yield _current.get()
    except BaseException as exc:
        sp.record_exception(exc)
        from opentelemetry.trace import Status, StatusCode

        sp.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
        raise
    finally:
        _current.reset(token)
        sp.end()


def record(
    name: str,
    parent: str,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, str | int] | None = None,
) -> None:
    """A span that already happened (e.g. a batch import on a worker thread), timed by the
    caller with time.time_ns(); nothing when tracing is off."""
    tracer = _tracer
    if tracer is None:
        return
    sp = tracer.start_span(
        name, context=_parent_context(parent), attributes=attributes, start_time=start_ns
    )
    sp.end(end_time=end_ns)


# -- entries appended by a traced turn, until the mesh sends them ---------------------------------
def note_entry(raw: bytes, traceparent: str) -> None:
    """Remember which turn appended this entry (its signed bytes), so the mesh can send the
    context beside it; the most recent ENTRY_TRACES only (any thread)."""
    with _lock:
        _entry_traces[raw] = traceparent
        if len(_entry_traces) > ENTRY_TRACES:
            _entry_traces.popitem(last=False)


def entry_trace(raw: bytes) -> str | None:
    """The traceparent of the turn that appended the entry `raw`, if it was traced."""
    if not _entry_traces:
        return None
    with _lock:
        return _entry_traces.get(raw)


# -- log records ----------------------------------------------------------------------------------
_installed = False


def install_log_records() -> None:
    """Give every log record made during a traced turn a `trace_id` attribute (the journal's
    GIBSEY_TRACE_ID). Installed once per process, when a node starts."""
    global _installed
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        traceparent = _current.get()
        if traceparent is not None:
            record.trace_id = traceparent[3:35]
        return record

    logging.setLogRecordFactory(factory)
