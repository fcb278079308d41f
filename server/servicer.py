"""The gRPC servicer: decode, call the engine, encode. No solver code here."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

import grpc

from engine.errors import InvalidRequest, PolicyInvalid, Unavailable
from server import callclock, convert, encode
from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.admission import Admission
from server.errors import DeadlineExpired, ErrorStatus, Overloaded, abort, to_error_message, to_status
from server.heavy import HeavyUnavailable, RelayedStatus, relay

log = logging.getLogger(__name__)

# Trailing metadata of every answered Rerank / RerankBatch: which server process answered.
WORKER_PID_METADATA_KEY = "x-worker-pid"

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Reranker"].full_name  # "reranker.v1.Reranker"

# Policies are small documents; refuse anything bigger before parsing it.
MAX_POLICY_CHARS = 1 << 20

# grpc reports a huge time_remaining() when the caller set no deadline; above this, treat as none.
_NO_DEADLINE_S = 365 * 24 * 3600.0


def _remaining_ms(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None
    return max(remaining, 0.0) * 1000.0


class RerankerServicer(pb_grpc.RerankerServicer):
    """`reranker.v1.Reranker` over an `engine.engine.Engine` (anything with its methods)."""

    def __init__(self, engine, metrics=None, admission: Admission | None = None, heavy=None) -> None:
        """`heavy`: a server.heavy.HeavyWorker to forward heavy calls to (None: they run here)."""
        self._engine = engine
        self.heavy = heavy
        self._metrics = metrics  # server.metrics.ServerMetrics, or None: nothing recorded
        self.admission = admission if admission is not None else Admission()
        self._pid_metadata = ((WORKER_PID_METADATA_KEY, str(os.getpid())),)
        self._preview_lock = threading.Lock()  # one preview at a time per process (minutes of CPU)
        if metrics is not None and hasattr(metrics, "watch_admission"):
            metrics.watch_admission(self.admission)
            self.admission.error_observer = lambda method, code: metrics.errors.labels(method, code).inc()
        convert.warmup()  # the decoder's kernels, compiled before the server can report SERVING
        encode.warmup()  # and the encoder's

    # ------------------------------------------------------------------------------- Rerank

    def Rerank(self, request: pb.RerankRequest | convert.LiteRerankRequest, context: grpc.ServicerContext,
               raw: bytes | None = None) -> bytes:
        """`raw`: the bytes `request` was parsed from, if at hand (the decoder reads columns there).
        `request`: as server.app parses it (convert.parse_rerank), or a parsed message.
        Returns the response's bytes (server.encode; server.app's serializer sends bytes as they are)."""
        t0 = time.perf_counter()
        try:
            self._shed_if_expired(context, request.policy)
            work = self._admit_work(request.policy, self._work(request))
            with self.admission.lane(work, request.policy) as in_lane:
                if in_lane and self.heavy is not None and raw is not None:
                    return self.heavy.forward("Rerank", raw, context)
                response = self._rerank(request, context, raw, callclock.current(), as_bytes=True)
            context.set_trailing_metadata(self._pid_metadata)
            return response
        except RelayedStatus as exc:  # the heavy worker's own answer: passed on as it is
            relay(context, exc)
        except Exception as exc:  # noqa: BLE001 - every exception goes through the one table
            status = self._status(exc, request_id=request.request_id, policy=request.policy)
        if self._metrics is not None:
            self._metrics.observe_error("Rerank", request.policy, status.code.name, time.perf_counter() - t0)
        abort(context, status, self._pid_metadata)

    def RerankBatch(
        self, request: pb.RerankBatchRequest | convert.LiteRerankBatch, context: grpc.ServicerContext,
        raw: bytes | None = None,
    ) -> pb.RerankBatchResponse:
        """`request`: as server.app parses it (convert.parse_rerank_batch: each request read as
        Rerank's are), or a parsed message."""
        t_batch = time.perf_counter()
        try:
            self._shed_if_expired(context, "")
            limit = self.admission.limits.max_batch
            if len(request.requests) > limit:
                self.admission.count_shed("batch_too_large")
                raise Overloaded("requests", f"at most {limit} requests per RerankBatch on this server "
                                             f"(reranker serve --max-batch), got {len(request.requests)}; "
                                             "split the batch")
            work = sum(self._work(one) for one in request.requests)
            work = self._admit_work("", work, what="this batch's requests ask")
            with self.admission.lane(work) as in_lane:
                if in_lane and self.heavy is not None and raw is not None:
                    return self.heavy.forward("RerankBatch", raw, context)
                return self._batch(request, context)
        except RelayedStatus as exc:
            relay(context, exc)
        except Exception as exc:  # noqa: BLE001 - the one table
            status = self._status(exc)
        if self._metrics is not None:
            self._metrics.observe_error("RerankBatch", "", status.code.name, time.perf_counter() - t_batch)
        abort(context, status, self._pid_metadata)

    def _batch(self, request: pb.RerankBatchRequest | convert.LiteRerankBatch, context) -> pb.RerankBatchResponse:
        out = pb.RerankBatchResponse()
        for one in request.requests:
            result = out.results.add()
            t0 = time.perf_counter()
            try:
                result.response.CopyFrom(self._rerank(one, context))
            except Exception as exc:  # noqa: BLE001 - one bad request must not spoil the batch
                status = to_status(exc, request_id=one.request_id, policy=one.policy)
                result.error.CopyFrom(to_error_message(status))
                if self._metrics is not None:
                    self._metrics.observe_error("RerankBatch", one.policy, status.code.name,
                                                time.perf_counter() - t0)
        context.set_trailing_metadata(self._pid_metadata)
        return out

    # ------------------------------------------------------------------------- admission

    def forward_unparsed(self, method: str, raw: bytes, context: grpc.ServicerContext):
        """A message over heavy_bytes, with the heavy lane in a process of its own: straight to
        the heavy worker, unparsed (parsing a 64 x 3,000 batch holds the GIL for 9-28 ms), once
        it holds the heavy slot. None when the lane runs in this process (the caller parses)."""
        if self.heavy is None:
            return None
        t0 = time.perf_counter()
        try:
            self._shed_if_expired(context, "")
            with self.admission.lane(0, message_bytes=len(raw)):
                return self.heavy.forward(method, raw, context)
        except RelayedStatus as exc:
            relay(context, exc)
        except Exception as exc:  # noqa: BLE001 - the one table
            status = self._status(exc)
        if self._metrics is not None:
            self._metrics.observe_error(method, "", status.code.name, time.perf_counter() - t0)
        abort(context, status, self._pid_metadata)

    @staticmethod
    def _status(exc: BaseException, **context) -> ErrorStatus:
        """to_status, plus the heavy lane's own refusal (its worker process is not serving)."""
        if isinstance(exc, HeavyUnavailable):
            log.info("request rejected", extra={"code": "UNAVAILABLE", "error": str(exc), **context})
            return ErrorStatus(grpc.StatusCode.UNAVAILABLE, str(exc), ())
        return to_status(exc, **context)

    def _shed_if_expired(self, context: grpc.ServicerContext, policy: str) -> None:
        """A call whose deadline passed while it waited for a handler thread: shed, counted."""
        if _remaining_ms(context) == 0.0:
            self.admission.count_shed("deadline_in_queue", policy=policy)
            raise DeadlineExpired("decoding (it expired while queued)")

    def _work(self, request: pb.RerankRequest) -> int:
        """Work units of a request, from its size alone (before decoding); 0 when its policy is
        unknown or it is otherwise invalid (the call then fails as usual, with its own message)."""
        estimate = getattr(self._engine, "estimate_work", None)
        if estimate is None:  # an engine without admission estimates (tests' stand-ins)
            return 0
        n, dim = convert.candidates_shape(request)
        try:
            greedy = estimate(request.policy, n, request.slate_size, request.explain, dim)
            return greedy + self._exact_work(request, greedy)
        except Exception:  # noqa: BLE001 - unknown policy and the like: reported by the call itself
            return 0

    def _exact_work(self, request: pb.RerankRequest, greedy: int) -> int:
        """Work units an exact solve may add when the request or its policy asks for exact or auto
        mode: its model, as large as the greedy's work again (its solve time is bounded by the
        budget and runs without the GIL). 0 for greedy. An upper estimate: the exact solver does
        not run when the greedy slate is provably optimal or the rules are not linear."""
        if request.solver == pb.SOLVER_MODE_GREEDY:
            return 0
        if request.solver == pb.SOLVER_MODE_UNSPECIFIED:
            store = getattr(self._engine, "store", None)
            if store is None or store.get(request.policy).policy.solver.mode == "greedy":
                return 0
        return greedy

    def _admit_work(self, policy: str, work: int, what: str = "this request asks") -> int:
        limit = self.admission.limits.max_work
        if work > limit:
            self.admission.count_shed("work_too_large", policy=policy)
            raise Overloaded("candidates.item_ids",
                             f"{what} for {work:,} work units (candidates x slate positions x greedy "
                             f"runs, x more with diversity; explain adds a run per rule; exact or auto "
                             f"mode counts twice), over this server's limit of {limit:,} (reranker "
                             "serve --max-work); send fewer candidates, a smaller slate_size, "
                             "explain: false or solver: SOLVER_MODE_GREEDY")
        return work

    def _rerank(self, request: pb.RerankRequest, context: grpc.ServicerContext,
                raw: bytes | None = None, clock: callclock.CallClock | None = None,
                as_bytes: bool = False) -> pb.RerankResponse | bytes:
        """`clock`: the call's steps so far (server.callclock); with it, `total` runs from the
        handler's start (the parse and admission included) and the response also reports queue,
        receive, parse and admission; without it (batch entries), from here.

        `as_bytes`: return the response serialized by the fast encoder (server.encode: the items
        written from the slate's columns); `encode` then holds the items' bytes and the rest's
        message, and the rest's serialization and the join are the clock's serialize step (as
        gRPC's serializer is for a message). Otherwise (RerankBatch) the message."""
        t0 = time.perf_counter()
        if _remaining_ms(context) == 0.0:
            raise DeadlineExpired("decoding")
        req = convert.decode_request(request, raw)
        remaining_ms = _remaining_ms(context)
        if remaining_ms == 0.0:
            raise DeadlineExpired("solving")
        if remaining_ms is not None:
            req = dataclasses.replace(req, deadline_ms=remaining_ms)
        t1 = time.perf_counter()
        result = self._engine.rerank(req)
        t2 = time.perf_counter()
        if as_bytes:
            resp, items_bytes = encode.encode_parts(result)
        else:
            resp, items_bytes = convert.encode_result(result), b""
        t3 = time.perf_counter()
        elapsed = resp.diagnostics.elapsed_us
        if "solve" not in elapsed:  # the engine times each solver (solve_greedy, ...): sum them
            elapsed["solve"] = sum(v for k, v in elapsed.items() if k.startswith("solve_"))
        elapsed["decode"] = (t1 - t0) * 1e6
        elapsed["encode"] = (t3 - t2) * 1e6
        start = t0
        if clock is not None and clock.parsed:
            elapsed.update(clock.steps_us())
            start = clock.handled / 1e9  # perf_counter_ns and perf_counter share one clock
            elapsed["admission"] = (t0 - clock.parsed / 1e9) * 1e6
        if self._metrics is not None:
            self._metrics.observe_ok(result, time.perf_counter() - start)
        elapsed["total"] = (time.perf_counter() - start) * 1e6
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "rerank",
                extra={"request_id": request.request_id, "policy": request.policy,
                       "n": convert.candidates_shape(request)[0], "k": len(result.items),
                       "solver": resp.diagnostics.solver, "elapsed_us": dict(elapsed)},
            )
        if not as_bytes:
            return resp
        if clock is None:
            return encode.join(resp, items_bytes)
        clock.serialized_from = time.perf_counter_ns()
        out = encode.join(resp, items_bytes)
        clock.serialized_to = time.perf_counter_ns()
        return out

    # ------------------------------------------------------------------------- policies

    def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: grpc.ServicerContext
    ) -> pb.ListPoliciesResponse:
        try:
            infos = self._engine.list_policies()
        except Exception as exc:  # noqa: BLE001
            status = to_status(exc)
        else:
            return pb.ListPoliciesResponse(policies=[convert.encode_policy_info(i) for i in infos])
        abort(context, status, self._pid_metadata)

    def ReportOutcomes(
        self, request: pb.ReportOutcomesRequest, context: grpc.ServicerContext
    ) -> pb.ReportOutcomesResponse:
        try:
            records = convert.decode_outcomes(request)
            accepted, dropped = self._engine.report_outcomes(records)
        except Exception as exc:  # noqa: BLE001
            status = to_status(exc)
        else:
            return pb.ReportOutcomesResponse(accepted=accepted, dropped=dropped)
        abort(context, status, self._pid_metadata)

    def PreviewPolicy(
        self, request: pb.PreviewPolicyRequest, context: grpc.ServicerContext
    ) -> pb.PreviewPolicyResponse:
        try:
            return self._preview(request)
        except Exception as exc:  # noqa: BLE001
            status = to_status(exc)
        abort(context, status, self._pid_metadata)

    def _preview(self, request: pb.PreviewPolicyRequest) -> pb.PreviewPolicyResponse:
        import json

        from engine.decision_log import is_stream_url
        from offline.policies import version_from_text
        from offline.preview import preview

        source = getattr(self._engine, "decision_log_source", None)
        if not source or is_stream_url(source):
            raise Unavailable("no decision log folder to preview on: start the server with --decision-log DIR")
        if len(request.proposed_yaml) > MAX_POLICY_CHARS:
            raise InvalidRequest("proposed_yaml", f"a policy document is at most {MAX_POLICY_CHARS} "
                                                  f"characters, got {len(request.proposed_yaml)}")
        proposed = version_from_text(request.proposed_yaml, "<proposed_yaml>")  # PolicyInvalid: nothing runs
        live = self._engine.version(request.policy)
        if not self._preview_lock.acquire(blocking=False):
            raise Overloaded("", "a preview is already running in this server process; try again later")
        try:
            pv = preview(source, live, proposed, sample=request.sample or None)
        finally:
            self._preview_lock.release()
        return pb.PreviewPolicyResponse(lines=pv.lines, report_json=json.dumps(pv.to_json(), default=str),
                                        records=pv.records)

    def ValidatePolicy(
        self, request: pb.ValidatePolicyRequest, context: grpc.ServicerContext
    ) -> pb.ValidatePolicyResponse:
        source = request.filename or "<request>"
        try:
            if len(request.yaml) > MAX_POLICY_CHARS:
                raise InvalidRequest(
                    "yaml", f"a policy document is at most {MAX_POLICY_CHARS} characters, got {len(request.yaml)}"
                )
            try:
                issues = self._engine.validate_policy_text(request.yaml, source)
            except PolicyInvalid as exc:  # the issues ARE the answer, not an RPC error
                issues = exc.issues
        except Exception as exc:  # noqa: BLE001
            status = to_status(exc)
        else:
            return pb.ValidatePolicyResponse(valid=not issues, issues=convert.encode_issues(issues))
        abort(context, status, self._pid_metadata)

