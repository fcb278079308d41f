"""The gRPC servicer: decode, call the engine, encode. No solver code here."""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import grpc

from engine.errors import InvalidRequest, PolicyInvalid
from server import convert
from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.errors import DeadlineExpired, abort, to_error_message, to_status

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

    def __init__(self, engine, metrics=None) -> None:
        self._engine = engine
        self._metrics = metrics  # server.metrics.ServerMetrics, or None: nothing recorded
        self._pid_metadata = ((WORKER_PID_METADATA_KEY, str(os.getpid())),)
        convert.warmup()  # the decoder's kernels, compiled before the server can report SERVING

    # ------------------------------------------------------------------------------- Rerank

    def Rerank(self, request: pb.RerankRequest, context: grpc.ServicerContext,
               raw: bytes | None = None) -> pb.RerankResponse:
        """`raw`: the bytes `request` was parsed from, if at hand (the decoder reads columns there)."""
        t0 = time.perf_counter()
        try:
            response = self._rerank(request, context, raw)
            context.set_trailing_metadata(self._pid_metadata)
            return response
        except Exception as exc:  # noqa: BLE001 - every exception goes through the one table
            status = to_status(exc, request_id=request.request_id, policy=request.policy)
        if self._metrics is not None:
            self._metrics.observe_error("Rerank", request.policy, status.code.name, time.perf_counter() - t0)
        abort(context, status)

    def RerankBatch(
        self, request: pb.RerankBatchRequest, context: grpc.ServicerContext
    ) -> pb.RerankBatchResponse:
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

    def _rerank(self, request: pb.RerankRequest, context: grpc.ServicerContext,
                raw: bytes | None = None) -> pb.RerankResponse:
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
        resp = convert.encode_result(result)
        t3 = time.perf_counter()
        elapsed = resp.diagnostics.elapsed_us
        if "solve" not in elapsed:  # the engine times each solver (solve_greedy, ...): sum them
            elapsed["solve"] = sum(v for k, v in elapsed.items() if k.startswith("solve_"))
        elapsed["decode"] = (t1 - t0) * 1e6
        elapsed["encode"] = (t3 - t2) * 1e6
        t4 = time.perf_counter()
        elapsed["total"] = (t4 - t0) * 1e6
        if self._metrics is not None:
            self._metrics.observe_ok(result, t4 - t0)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "rerank",
                extra={"request_id": request.request_id, "policy": request.policy,
                       "n": len(request.candidates.item_ids), "k": len(resp.items),
                       "solver": resp.diagnostics.solver, "elapsed_us": dict(elapsed)},
            )
        return resp

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
        abort(context, status)

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
        abort(context, status)
