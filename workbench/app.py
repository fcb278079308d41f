"""The workbench's web application (FastAPI): one page, a small JSON API, static files.

    app = create_app(Config(policies="policies", log="logs/decisions"))

API (JSON in and out; errors are {"error": message, "issues": [...]} with the HTTP status):
    GET  /api/state                 policies and experiments (version, digest, first error), mode
    GET  /api/policies/{file}       a policy file's text and digest (the editor's base)
    POST /api/validate              {text, file} -> {valid, issues (line, path, message), numbers}
    POST /api/diff                  {file, text} -> {diff} against the file on disk
    POST /api/preview               {file, text, sample} -> 202 {job}; 422 for an invalid proposal
    POST /api/pareto                {file, text, vary: [{path, lo, hi, n}], metrics, refine, sample}
    GET  /api/pareto/{job}/{i}      the policy text of a sweep's point i
    GET  /api/jobs/{id}[?wait=S]    state, phase, progress, and the result once done (wait: a long
                                    poll that answers as soon as the job ends)
    POST /api/promote               {file, text, base_digest} (+ X-Workbench-Token) -> {digest}
                                    401/403 without the token, 403 read-only, 409 lost race,
                                    422 invalid
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import Body, FastAPI, Header, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from engine.errors import PolicyInvalid
from offline.pareto import ParetoError
from offline.preview import PreviewError
from offline.replay import ReplayError
from workbench import work
from workbench.folder import Folders, Invalid, NotFound, WorkbenchError, numbers_of
from workbench.jobs import KEEP, Jobs

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
TOKEN_HEADER = "X-Workbench-Token"
TOKEN_ENV = "RERANKER_WORKBENCH_TOKEN"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def is_local(host: str) -> bool:
    """Whether binding `host` keeps the page on this machine (loopback only)."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Config:
    policies: str
    log: str | None = None
    experiments: str | None = None
    host: str = "127.0.0.1"
    read_only: bool = False
    token: str | None = None
    warmup: bool = True
    workers: int = 0  # > 1: previews and sweeps replay on that many local processes

    def check(self) -> None:
        """Refuse a configuration that would expose writes: beyond localhost, promote needs a token."""
        if not is_local(self.host) and not self.token and not self.read_only:
            raise WorkbenchError(
                f"--host {self.host}: the page would be reachable beyond this machine with no token; "
                f"give --token (or {TOKEN_ENV}) so that every promote needs it, or run --read-only")
        if self.token is not None and len(self.token) < 8:
            raise WorkbenchError("--token: use at least 8 characters")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise WorkbenchError(f"--workers: expected an integer >= 0, got {self.workers!r}")


def plotly_js() -> Path:
    """plotly's bundled plotly.min.js (from the plotly package: no CDN)."""
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"plotly.min.js not found in the plotly package ({path})")
    return path


def _error(status: int, message: str, issues: list | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "issues": issues or []}, status_code=status)


def create_app(config: Config) -> FastAPI:
    config.check()
    folders = Folders(config.policies, config.experiments)
    jobs = Jobs()
    scratch = tempfile.TemporaryDirectory(prefix="workbench-")
    samples = work.Samples(config.log, scratch.name, config.workers) if config.log else None
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    js = plotly_js()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if config.warmup and samples is not None:
            jobs.submit("warmup", 0, lambda job: _warmup(job, folders, samples, jobs))
        yield
        jobs.shutdown()
        scratch.cleanup()

    app = FastAPI(title="reranker workbench", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.config, app.state.folders, app.state.jobs = config, folders, jobs
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    local = is_local(config.host)

    @app.middleware("http")
    async def same_origin_json(request: Request, call_next):
        """Bound to the loopback, only requests addressed to a loopback name (a DNS-rebinding page
        names its own host). Writes and jobs only from this page: a POST must be JSON (a
        cross-site form cannot send it without a CORS preflight, which this app never grants)
        and, when the browser names its Origin, come from the page's own origin."""
        if local:
            host = request.headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.strip("[]") not in LOOPBACK_NAMES:
                return _error(403, f"this workbench is bound to {config.host}: open it as "
                                   f"http://127.0.0.1:PORT/ (the request named host {host!r})")
        if request.method == "POST":
            if not request.headers.get("content-type", "").startswith("application/json"):
                return _error(415, "POST bodies must be JSON (Content-Type: application/json)")
            origin = request.headers.get("origin")
            if origin and origin.split("://", 1)[-1] != request.headers.get("host", ""):
                return _error(403, f"cross-origin request refused (Origin {origin!r} is not this page)")
        return await call_next(request)

    @app.exception_handler(WorkbenchError)
    async def _wb_error(request: Request, exc: WorkbenchError):
        return _error(exc.status, str(exc), exc.issues)

    @app.exception_handler(ParetoError)
    async def _pareto_error(request: Request, exc: ParetoError):
        return _error(422, str(exc))

    @app.exception_handler(ReplayError)
    async def _replay_error(request: Request, exc: ReplayError):
        return _error(422, str(exc))

    def need_log():
        if samples is None:
            raise WorkbenchError("no decision log: start the workbench with --log PATH to preview or sweep")
        return samples

    def check_write(token: str | None) -> None:
        if config.read_only:
            raise _Forbidden("the workbench runs --read-only: promote is turned off")
        if config.token:
            if not token:
                raise _Unauthorized(f"promote needs the workbench token (header {TOKEN_HEADER}); "
                                    f"enter it in the promote dialog")
            if not hmac.compare_digest(token.encode(), config.token.encode()):
                raise _Forbidden("the workbench token is wrong: nothing was written")

    # ------------------------------------------------------------------ page and static files
    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        return templates.TemplateResponse(request, "index.html", {
            "policies": os.fspath(config.policies), "log": config.log or "",
            "read_only": config.read_only, "token_required": bool(config.token),
            "default_sample": work.DEFAULT_SAMPLE})

    @app.get("/vendor/plotly.min.js")
    def plotly_bundle():
        return FileResponse(js, media_type="application/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    # ------------------------------------------------------------------ reading
    @app.get("/api/state")
    def state():
        return {"policies": folders.list_policies(), "experiments": folders.list_experiments(),
                "experiments_folder": config.experiments, "policies_folder": os.fspath(config.policies),
                "log": config.log, "read_only": config.read_only, "token_required": bool(config.token),
                "default_sample": work.DEFAULT_SAMPLE}

    @app.get("/api/policies/{file}")
    def policy_file(file: str):
        text, digest = folders.read(file)
        return {"file": file, "text": text, "digest": digest, "numbers": numbers_of(text)}

    @app.post("/api/validate")
    def validate(body: dict = Body(...)):
        text, file = body.get("text"), body.get("file")
        version, issues = folders.validate(text, file)
        out = {"valid": version is not None, "issues": [i.to_json() for i in issues],
               "numbers": numbers_of(text) if isinstance(text, str) else []}
        if version is not None:
            out.update(name=version.name, version=version.loaded.policy.version)
            if samples is not None:
                try:
                    work.check_runs_on_log(samples.log, [version])
                except ReplayError as e:
                    out["log_problem"] = str(e)
        return out

    @app.post("/api/diff")
    def diff(body: dict = Body(...)):
        file, text = body.get("file"), body.get("text")
        if not isinstance(text, str):
            raise WorkbenchError("text: expected the proposed policy's YAML text")
        return {"diff": folders.diff(file, text)}

    @app.get("/api/metrics")
    def metrics(file: str | None = None):
        s = need_log()
        version = None
        if file:
            text, _ = folders.read(file)
            version, _ = folders.validate(text, file)
        return {"metrics": work.metric_choices(s.log, version)}

    # ------------------------------------------------------------------ jobs
    @app.post("/api/preview", status_code=202)
    def start_preview(body: dict = Body(...)):
        s = need_log()
        file, text = body.get("file"), body.get("text")
        try:
            n = work.check_sample(body.get("sample"))
        except ValueError as e:
            raise WorkbenchError(str(e)) from None
        live_text, _ = folders.read(file)
        proposed = folders.require_valid(text, file)
        try:
            live = folders.require_valid(live_text, file)
        except Invalid as e:
            raise Invalid(f"the live file {file} is invalid, so there is nothing to compare against: {e}",
                          e.issues) from None
        work.check_runs_on_log(s.log, [live, proposed])  # named before any work starts
        job = jobs.submit("preview", 2 * n, lambda job: work.preview_job(job, s, live, proposed, n))
        return job.to_json()

    @app.post("/api/pareto", status_code=202)
    def start_pareto(body: dict = Body(...)):
        s = need_log()
        file, text = body.get("file"), body.get("text")
        try:
            n = work.check_sample(body.get("sample"))
        except ValueError as e:
            raise WorkbenchError(str(e)) from None
        folders.read(file)
        version = folders.require_valid(text, file)
        work.check_runs_on_log(s.log, [version])
        refine = body.get("refine", 1)
        if isinstance(refine, bool) or not isinstance(refine, int) or not 0 <= refine <= 5:
            raise WorkbenchError(f"refine: expected an integer from 0 to 5, got {refine!r}")
        vary = work.pareto_specs(body.get("vary"))
        metric_specs = body.get("metrics")
        if not isinstance(metric_specs, list) or not all(isinstance(m, str) and m.strip() for m in metric_specs):
            raise ParetoError("metrics: expected a list of 2 or 3 metric names")
        metric_specs = [m.strip() for m in metric_specs]
        points = work.check_pareto(text, vary, metric_specs)
        job = jobs.submit("pareto", points * (1 + 0.5 * refine),
                          lambda job: work.pareto_job(job, s, folders, file, text, vary, metric_specs, refine, n,
                                                      scratch.name))
        return job.to_json()

    @app.get("/api/jobs/{job_id}")
    def job_state(job_id: str, wait: float = 0.0):
        """The job now; with `wait` (seconds, at most 5) as soon as it ends or when the wait is
        over (a long poll: the page gets the result the moment it is ready)."""
        job = jobs.get(job_id)
        if job is None:
            raise NotFound(f"job: no job {job_id!r} (finished jobs are kept for the last {KEEP})")
        if wait > 0:
            job.ended.wait(min(wait, 5.0))
        return job.to_json()

    @app.get("/api/pareto/{job_id}/{index}")
    def pareto_point(job_id: str, index: int):
        job = jobs.get(job_id)
        if job is None or job.kind != "pareto" or job.state != "done":
            raise NotFound(f"job: no finished Pareto sweep {job_id!r}")
        texts = job.extra.get("texts", {})
        if index not in texts:
            raise NotFound(f"point: the sweep {job_id} has no point {index} (it has 0 to {len(texts) - 1})")
        return {"file": job.result["file"], "index": index, "text": texts[index]}

    # ------------------------------------------------------------------ promote
    @app.post("/api/promote")
    def promote(request: Request, body: dict = Body(...), token: str | None = Header(None, alias=TOKEN_HEADER)):
        who = request.client.host if request.client else "?"
        try:
            check_write(token)
            out = folders.promote(body.get("file"), body.get("text"), body.get("base_digest"))
        except WorkbenchError as e:
            log.warning("promote refused (HTTP %s) for %s: %s", e.status, who, e)
            raise
        log.info("promoted %s/%s for %s: sha256 %s -> %s", config.policies, out["file"], who,
                 out["previous"][:12], out["digest"][:12])
        return out

    return app


class _Unauthorized(WorkbenchError):
    status = 401


class _Forbidden(WorkbenchError):
    status = 403


def _warmup(job, folders: Folders, samples: work.Samples, jobs: Jobs) -> dict:
    """Compile the kernels and cut the default sample before the first click: a short preview
    of the first valid policy that runs on the log against itself (twice: the second, warm,
    seeds the progress estimate)."""
    job.set_phase("warming up: compiling the kernels, sampling the log")
    samples.get(work.DEFAULT_SAMPLE)
    for row in folders.list_policies():
        if not row["valid"]:
            continue
        text, _ = folders.read(row["file"])
        version, _ = folders.validate(text, row["file"])
        try:
            work.check_runs_on_log(samples.log, [version])
        except (ReplayError, PolicyInvalid, PreviewError):
            continue
        source, records, _ = samples.get(min(50, work.DEFAULT_SAMPLE))
        work.preview(source, version, version, n_bootstrap=10)
        t0 = time.perf_counter()
        work.preview(source, version, version, n_bootstrap=10)
        jobs.learn((time.perf_counter() - t0) / (2 * records))
        return {"policy": row["name"]}
    return {"policy": None}
