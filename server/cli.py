"""`reranker`: the one command-line entry point.

    reranker serve    [--address 127.0.0.1:50051] [--policies policies] [--workers 8]
                      [--settle 0.5] [--state-dir DIR]
                      [--metrics-port 9464] [--metrics-host 127.0.0.1]
                      [--tls-cert FILE --tls-key FILE] [--processes 2] [--worker-ports BASE]
    reranker validate FILE|DIR...             exit 0 if every policy file is valid, 1 otherwise (a
                                                  folder: also no policy name in two files)
    reranker call     [--address ...] [--tls-ca FILE] FILE.json   send a Rerank request, print
                                                  slate + diagnostics
    reranker policies [--address ...] [--tls-ca FILE]   list the policies a running server has loaded
    reranker replay   --log DIR --policy A.yaml [--policy B.yaml ...] [--workers N | --ray [ADDR]]
                      [--report DIR] [--json]     re-run a decision log under policies (offline)
    reranker preview  --live NAME|FILE --proposed FILE --log PATH [--sample N] [--policies DIR]
                      [--json] [--report DIR]     what-if: a proposed policy against the live one
    reranker pareto   --policy P.yaml --log DIR --vary PATH=LO:HI:N ... --metric NAME ... [--out DIR]
                                                  the frontier of a policy's parameters over a log
    reranker schema   [--output FILE]             JSON Schema of the policy language

Output goes through rich (tables); logs (serve) are JSON lines on stderr.
Exit codes: 0 ok, 1 failure (invalid policy, RPC error), 2 usage error or unreadable input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workbench.cli import add_parser as add_workbench_parser

DEFAULT_ADDRESS = "127.0.0.1:50051"
#: Where `call` and `policies` connect when --address is not given.
ADDRESS_ENV = "RERANKER_ADDRESS"
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
_PIPE_WIDTH = 200


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with `argv` (default: sys.argv[1:]); returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    out = Console(soft_wrap=True, highlight=False)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    for console in (out, err):
        if not console.is_terminal:  # piped / captured: do not squeeze tables into 80 columns
            console.width = max(console.width, _PIPE_WIDTH)
    return args.func(args, out, err)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reranker", description="Slate re-ranking service: server, client and policy tools."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gRPC server until SIGTERM / SIGINT")
    p.add_argument("--address", default=DEFAULT_ADDRESS, help="host:port to bind (default %(default)s)")
    p.add_argument("--policies", default="policies", help="policy folder (default %(default)s)")
    p.add_argument("--decision-log", default=None, metavar="DIR|redis://HOST:PORT/DB",
                   help="log every served decision (the full request, the policy revision, the "
                        "experiment variant, the slate and its diagnostics) to Parquet files under "
                        "DIR (one folder per worker) or to a Redis stream; off the request path, "
                        "never failing a call (default: off)")
    p.add_argument("--log-sample-rate", type=float, default=1.0, metavar="RATE",
                   help="share of requests logged, by request id, in [0, 1] (default %(default)s)")
    p.add_argument("--experiments", default=None, metavar="DIR",
                   help="folder of experiment files splitting policy names into variants, "
                        "checked against the policies and reloaded with them (default: none)")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="handler threads per process (default 2; more only take turns on the GIL)")
    p.add_argument("--max-message-mb", type=_positive_int, default=16,
                   help="largest request / response in MiB (default %(default)s)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds in-flight calls get to finish on shutdown (default %(default)s)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--watch-interval", type=float, default=1.0, metavar="SECONDS",
                   help="check the policy folder for edits this often; 0 = only on SIGHUP (default %(default)s)")
    p.add_argument("--settle", type=float, default=0.5, metavar="SECONDS",
                   help="load a policy file only once its size, mtime and bytes stayed the same this "
                        "long, so a half-written file never goes live; 0 = load at once (default %(default)s)")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="keep the last good version of every policy file here and serve it when the "
                        "file is invalid at start-up; '' = off (default: "
                        "$XDG_STATE_HOME/reranker/last-good/<folder>-<hash>, else "
                        "<policies>/.reranker/last-good)")
    p.add_argument("--ledger", default=None, metavar="URL",
                   help="exposure ledger for amortized fairness: memory:// (default, this process) "
                        "or redis://host:port/db (shared by every replica)")
    p.add_argument("--metrics-port", type=int, default=9464, metavar="PORT",
                   help="Prometheus /metrics port; 0 = any free port, -1 = off (default %(default)s)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="interface the metrics endpoint binds (default %(default)s)")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain: serve over TLS (with --tls-key)")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--processes", type=_positive_int, default=2,
                   help="server processes sharing the port (SO_REUSEPORT), one per core; each has "
                        "its own metrics port, --metrics-port + its index; 1 = serve in this "
                        "process (default %(default)s)")
    p.add_argument("--worker-ports", type=int, default=None, metavar="BASE",
                   help="worker i also listens on port BASE + i alone (not shared), so that one "
                        "client channel with gRPC's round_robin over those ports uses every "
                        "worker; health and reflection answer there too (default: off)")
    # admission control and operations (see README "Operating it")
    for flag, kind, default, metavar, text in _OPERATING_OPTIONS:
        p.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("validate", help="check policy files or folders; print every error as "
                                         "file: path: message")
    p.add_argument("files", nargs="+", metavar="FILE|DIR",
                   help="a policy file, or a folder: its *.yaml / *.yml files (any letter case), "
                        "with the server's one-name-one-file check")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("call", help="send a Rerank request from a JSON file to a running server")
    p.add_argument("file", metavar="FILE.json")
    p.add_argument("--address", default=None,
                   help=f"server host:port (default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS})")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the response as proto3 JSON instead of tables")
    p.add_argument("--tls-ca", metavar="FILE", help="connect over TLS, trusting this PEM CA / server certificate")
    p.set_defaults(func=_cmd_call)

    p = sub.add_parser("policies", help="list the policies loaded by a running server")
    p.add_argument("--address", default=None,
                   help=f"server host:port (default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS})")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default %(default)s)")
    p.add_argument("--tls-ca", metavar="FILE", help="connect over TLS, trusting this PEM CA / server certificate")
    p.set_defaults(func=_cmd_policies)

    p = sub.add_parser("experiment", help="check experiment files, or rebalance one's weights")
    exp = p.add_subparsers(dest="experiment_command", required=True, metavar="{check,rebalance}")
    q = exp.add_parser("check", help="validate experiment files against a policy folder")
    q.add_argument("folder", metavar="DIR", help="the experiment folder")
    q.add_argument("--policies", default="policies", help="policy folder (default %(default)s)")
    q.set_defaults(func=_cmd_experiment_check)
    q = exp.add_parser("rebalance", help="print the experiment with new weights and the bucket "
                                         "ranges that move only the units that must move")
    q.add_argument("file", metavar="FILE", help="the experiment file")
    q.add_argument("weights", nargs="+", metavar="VARIANT=PERCENT", help="every variant's new weight")
    q.add_argument("--output", "-o", metavar="FILE", help="file to write (default: stdout)")
    q.set_defaults(func=_cmd_experiment_rebalance)

    p = sub.add_parser("log", help="summarise a decision log (a folder of Parquet files, or "
                                   "redis://HOST:PORT/DB for the stream)")
    p.add_argument("source", metavar="DIR|FILE|redis://HOST:PORT/DB")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_log)

    p = sub.add_parser("outcomes", help="add outcomes from a CSV file to a decision log's outcomes "
                                        "(columns request_id, position, item_id, clicks, "
                                        "add_to_carts, purchases)")
    p.add_argument("file", metavar="FILE.csv")
    p.add_argument("--log", required=True, metavar="DIR",
                   help="the decision log folder (serve --decision-log DIR); written to DIR/outcomes")
    p.set_defaults(func=_cmd_outcomes)

    p = sub.add_parser("replay", help="re-run a decision log under policies: direct metrics, exposure, "
                                      "rule costs, off-policy estimates")
    p.add_argument("--log", required=True, metavar="DIR|FILE|redis://HOST:PORT/DB", help="the decision log")
    p.add_argument("--policy", action="append", required=True, metavar="FILE.yaml", dest="policies",
                   help="a policy file to replay (repeat for several)")
    p.add_argument("--outcomes", metavar="DIR|FILE",
                   help="outcomes for off-policy estimates (default: LOG/outcomes when it exists)")
    p.add_argument("--outcome", default="clicks", choices=["clicks", "add_to_carts", "purchases"],
                   help="the reward of the off-policy estimates (default clicks)")
    p.add_argument("--reward-score", default="p_click", metavar="SCORE",
                   help="the score column the estimates' reward model scales (default p_click)")
    p.add_argument("--position-weights", default="log2", choices=["log2", "reciprocal", "none"],
                   help="examination weights of the direct metrics (default log2)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="run on N local processes")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray (a local Ray when no ADDRESS is given)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B", help="bootstrap resamples (default 1000)")
    p.add_argument("--report", metavar="DIR", help="write report.json, report.md and report.html there")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("preview", help="what-if: replay a proposed policy and the live one on the same logged "
                                       "requests and compare them, with paired CIs")
    p.add_argument("--live", required=True, metavar="NAME|FILE",
                   help="the live policy: a name in --policies, or a policy file")
    p.add_argument("--proposed", required=True, metavar="FILE.yaml", help="the proposed policy file")
    p.add_argument("--log", required=True, metavar="DIR|FILE|redis://HOST:PORT/DB", help="the decision log")
    p.add_argument("--sample", type=int, metavar="N", help="only N records of the log (the first N; "
                                                           "with --sample-seed a uniform sample)")
    p.add_argument("--sample-seed", type=int, metavar="S", help="draw the --sample records at random, seeded")
    p.add_argument("--rule-costs", action="store_true",
                   help="also each rule's mean cost (objective gained if it were dropped; slower)")
    p.add_argument("--policies", default="policies", metavar="DIR",
                   help="where --live NAME is looked up (default %(default)s)")
    p.add_argument("--outcomes", metavar="DIR|FILE",
                   help="outcomes for off-policy estimates (default: LOG/outcomes when it exists)")
    p.add_argument("--outcome", default="clicks", choices=["clicks", "add_to_carts", "purchases"],
                   help="the reward of the off-policy estimates (default clicks)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="paired bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--report", metavar="DIR", help="write preview.json and preview.md there")
    p.add_argument("--json", action="store_true", help="print the preview as JSON")
    p.set_defaults(func=_cmd_preview)

    p = sub.add_parser("pareto", help="sweep policy parameters over a log: the frontier of 2 or 3 metrics, "
                                      "every point as a policy file")
    p.add_argument("--policy", required=True, metavar="FILE.yaml", help="the policy to vary")
    p.add_argument("--log", required=True, metavar="DIR|FILE|redis://HOST:PORT/DB", help="the decision log")
    p.add_argument("--vary", action="append", required=True, metavar="PATH=LO:HI:N",
                   help="a number of the policy and its values, e.g. objective.weights.p_purchase=0:4:9 "
                        "or constraints.max_3_per_category.max=1,2,3 (repeat for a grid)")
    p.add_argument("--metric", action="append", required=True, metavar="NAME[:min]",
                   help="expected_<score>, coverage, exposure_gini, share:ATTRIBUTE=VALUE, relaxed:RULE "
                        "(2 or 3; higher is better unless :min)")
    p.add_argument("--refine", type=int, default=1, metavar="R",
                   help="rounds of midpoints between frontier neighbours (default 1)")
    p.add_argument("--out", metavar="DIR", help="write every point as DIR/point-NNN.yaml, DIR/frontier.png "
                                                "and DIR/pareto.json")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="run on N local processes")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray (a local Ray when no ADDRESS is given)")
    p.add_argument("--json", action="store_true", help="print the sweep as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pareto)

    add_workbench_parser(sub)  # reranker workbench (workbench/cli.py)
    from simulation.cli import add_parser as add_simulate_parser  # `reranker simulate`: simulation/cli.py
    add_simulate_parser(sub)
    p = sub.add_parser("schema", help="write the JSON Schema of the policy language")
    p.add_argument("--output", "-o", metavar="FILE", help="file to write (default: stdout)")
    p.set_defaults(func=_cmd_schema)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slate-reranker")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown (not installed)"


def _client_address(args) -> str:
    """--address, else $RERANKER_ADDRESS, else the default; stored back on `args`."""
    import os

    if args.address is None:
        args.address = os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    return args.address


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _heavy_lane(text: str) -> str:
    if text not in ("process", "thread"):
        raise argparse.ArgumentTypeError(f"expected process or thread, got {text!r}")
    return text


# ------------------------------------------------------------------------------------ serve


#: `serve`'s admission-control and operating options: (flag, type, default, metavar, help).
_OPERATING_OPTIONS = (
    ("--max-batch", _positive_int, 64, "N", "most requests in one RerankBatch (default %(default)s)"),
    ("--max-work", _positive_int, 10_000_000, "UNITS",
     "most work units in one request or batch: candidates x slate positions x greedy runs "
     "(explain: +1 per rule) x a diversity factor (default %(default)s)"),
    ("--heavy-work", _positive_int, 500_000, "UNITS",
     "requests above this many units run one at a time per process (the heavy lane) or are "
     "refused RESOURCE_EXHAUSTED (default %(default)s)"),
    ("--heavy-lane", _heavy_lane, "process", "process|thread",
     "where heavy calls run: a heavy worker process next to each serving process (their Python "
     "then never holds the serving process's GIL), or a thread of the serving process "
     "(default %(default)s)"),
    ("--heavy-nice", int, 10, "N",
     "with --heavy-lane process: the heavy worker's niceness increment (0-19), so that busy cores "
     "go to normal calls first (default %(default)s)"),
    ("--heavy-bytes", _positive_int, 512 * 1024, "BYTES",
     "messages over this size count as heavy before they are parsed: refused while the lane is "
     "busy, and with --heavy-lane process sent to the heavy worker unparsed (default %(default)s)"),
    ("--max-queue", int, 0, "N",
     "calls that may wait for a handler thread per process; more are refused at once "
     "(RESOURCE_EXHAUSTED, queue full); 0 = no bound (default %(default)s)"),
    ("--max-connection-age", float, 30.0, "SECONDS",
     "close client connections at this age (they reconnect), so load rebalances after a worker "
     "restart; 0 = never (default %(default)s)"),
    ("--drain", float, 0.0, "SECONDS",
     "on SIGTERM, report NOT_SERVING this long while still serving, before closing the listener "
     "(default %(default)s; 5-10 behind a load balancer)"),
    ("--blas-threads", int, 1, "N",
     "BLAS threads per process; 0 = the library's default (default %(default)s)"),
    ("--gil-switch-ms", float, None, "MS",
     "Python's GIL switch interval; lower values let normal calls through while a heavy one "
     "runs Python code (default: Python's 5 ms)"),
)


def _cmd_serve(args, out: Console, err: Console) -> int:
    from server.logging_setup import configure_logging

    configure_logging(args.log_level)
    # Before server.app, whose import compiles the wire kernels: every kernel is compiled (or
    # loaded from the Numba cache) here, with progress lines; worker processes then load them
    # from the cache instead of compiling them side by side.
    from server.startup import import_kernels

    import_kernels()
    from server.admission import AdmissionLimits
    from server.app import BindError, serve
    from server.supervisor import serve_processes

    if not 0.0 <= args.log_sample_rate <= 1.0:
        err.print(f"error: --log-sample-rate: must be a number in [0, 1], got {args.log_sample_rate:g}")
        return EXIT_USAGE
    if args.experiments is not None and not Path(args.experiments).is_dir():
        err.print(f"error: experiment folder not found: {escape(args.experiments)}")
        return EXIT_USAGE
    if not Path(args.policies).is_dir():
        err.print(f"error: policy folder not found: {escape(args.policies)}")
        return EXIT_USAGE
    if bool(args.tls_cert) != bool(args.tls_key):
        err.print("error: --tls-cert and --tls-key go together")
        return EXIT_USAGE
    tls = None
    if args.tls_cert:
        try:
            tls = (Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())
        except OSError as exc:
            err.print(f"error: cannot read TLS files: {escape(str(exc))}")
            return EXIT_USAGE
    ports = {}
    if args.worker_ports is not None:
        from server.heavy import HEAVY_METRICS_PORT_OFFSET
        from server.supervisor import check_worker_ports

        metrics_ports = ()
        if args.metrics_port > 0:
            offsets = (0, HEAVY_METRICS_PORT_OFFSET) if args.heavy_lane == "process" else (0,)
            metrics_ports = tuple(args.metrics_port + o + i for o in offsets
                                  for i in range(args.processes))
        try:
            check_worker_ports(args.worker_ports, args.processes, args.address, metrics_ports)
        except ValueError as exc:
            err.print(f"error: {escape(str(exc))}")
            return EXIT_USAGE
        ports = ({"worker_port": args.worker_ports} if args.processes == 1
                 else {"worker_ports": args.worker_ports})
    run = serve if args.processes == 1 else partial(serve_processes, processes=args.processes)
    workers = {} if args.workers is None else {"max_workers": args.workers}
    try:
        return run(
            args.address,
            args.policies,
            **workers,
            max_message_bytes=args.max_message_mb * 1024 * 1024,
            grace_s=args.grace,
            ledger_url=args.ledger,
            watch_interval_s=args.watch_interval,
            settle_s=args.settle,
            state_dir=args.state_dir,
            experiments_dir=args.experiments,
            decision_log=args.decision_log,
            log_sample_rate=args.log_sample_rate,
            metrics_port=None if args.metrics_port < 0 else args.metrics_port,
            metrics_host=args.metrics_host,
            tls=tls,
            admission=AdmissionLimits(max_batch=args.max_batch, max_work=args.max_work,
                                      heavy_work=args.heavy_work, heavy_bytes=args.heavy_bytes,
                                      max_queue=args.max_queue if args.max_queue > 0 else None),
            max_connection_age_s=args.max_connection_age or None,
            drain_s=args.drain,
            blas_threads=args.blas_threads or None,
            gil_switch_ms=args.gil_switch_ms,
            heavy_lane=args.heavy_lane,
            heavy_nice=args.heavy_nice,
            **ports,
        )
    except BindError as exc:
        err.print(f"error: {escape(str(exc))}", style="red")
        return EXIT_FAIL


# --------------------------------------------------------------------------------- validate


def _cmd_validate(args, out: Console, err: Console) -> int:
    from engine.errors import PolicyInvalid
    from engine.policy_loader import LoadedPolicy, check_folder, load_policy_file

    all_valid = True
    for arg in args.files:
        if Path(arg).is_dir():
            try:
                results = check_folder(arg)
            except OSError as exc:
                out.print(f"{escape(arg)}: cannot read the folder: {escape(str(exc))}", style="red")
                all_valid = False
                continue
            if not results:
                out.print(f"{escape(arg)}: no policy files (*.yaml, *.yml) in this folder", style="red")
                all_valid = False
        else:
            try:
                results = [(arg, load_policy_file(arg))]
            except PolicyInvalid as exc:
                results = [(arg, exc)]
        for file, result in results:
            if isinstance(result, LoadedPolicy):
                p = result.policy
                out.print(f"{escape(file)}: OK (policy {escape(str(p.name))}, version {escape(str(p.version))})",
                          style="green")
                continue
            all_valid = False
            for issue in result.issues:
                where = f"{issue.path}: " if issue.path else ""
                out.print(f"{escape(file)}: {escape(where)}{escape(issue.message)}", style="red")
    return EXIT_OK if all_valid else EXIT_FAIL


def _print_invalid(out: Console, exc) -> None:
    for issue in exc.issues:
        where = f"{issue.path}: " if issue.path else ""
        out.print(f"{escape(exc.source)}: {escape(where)}{escape(issue.message)}", style="red")


def _cmd_experiment_check(args, out: Console, err: Console) -> int:
    from engine.experiment_store import ExperimentStore
    from engine.policy_loader import LoadedPolicy, check_folder

    logging.getLogger("engine.experiment_store").setLevel(logging.CRITICAL)  # printed below instead
    try:
        names = [r.name for _, r in check_folder(args.policies) if isinstance(r, LoadedPolicy)]
        store = ExperimentStore(args.folder)
        report = store.reload(names)
    except OSError as exc:
        err.print(f"error: {escape(str(exc))}", style="red")
        return EXIT_USAGE
    for exc in report.errors:
        _print_invalid(out, exc)
    for le in store.live.experiments:
        variants = ", ".join(f"{v.name} {v.weight:g} %" for v in le.experiment.variants)
        out.print(f"{escape(le.source)}: OK (experiment {escape(le.name)} on "
                  f"{escape(le.experiment.policy)}: {escape(variants)})", style="green")
    return EXIT_OK if not report.errors else EXIT_FAIL


def _cmd_experiment_rebalance(args, out: Console, err: Console) -> int:
    import yaml

    from engine.experiments import ExperimentInvalid, experiment_with_weights, load_experiment_file

    try:
        weights = {}
        for item in args.weights:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"{item!r}: expected VARIANT=PERCENT")
            weight = float(value)
            weights[name] = int(weight) if weight.is_integer() else weight
        exp = load_experiment_file(args.file).experiment
        text = yaml.safe_dump(experiment_with_weights(exp, weights), sort_keys=False,
                              default_flow_style=None)
    except ExperimentInvalid as exc:
        _print_invalid(out, exc)
        return EXIT_FAIL
    except ValueError as exc:
        err.print(f"error: {escape(str(exc))}", style="red")
        return EXIT_USAGE
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        out.print(f"wrote {escape(args.output)}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _cmd_outcomes(args, out: Console, err: Console) -> int:
    import csv

    from engine.decision_log import OutcomeRecord, outcome_log

    counts = ("clicks", "add_to_carts", "purchases")
    records, problems = [], []
    try:
        with open(args.file, newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            missing = {"request_id", "position"} - set(rows.fieldnames or ())
            if missing:
                err.print(f"error: {escape(args.file)}: missing column(s) {', '.join(sorted(missing))}")
                return EXIT_FAIL
            for line, row in enumerate(rows, start=2):
                try:
                    position = int(row["position"])
                    values = [int(row.get(c) or 0) for c in counts]
                    if not row["request_id"] or position < 1 or min(values) < 0:
                        raise ValueError
                except (TypeError, ValueError):
                    problems.append(f"{args.file}, line {line}: request_id must be set, position an "
                                    f"integer >= 1 and {', '.join(counts)} integers >= 0, got {dict(row)}")
                    continue
                records.append(OutcomeRecord(row["request_id"], position, row.get("item_id") or "", *values))
    except OSError as exc:
        err.print(f"error: cannot read {escape(args.file)}: {escape(str(exc))}")
        return EXIT_FAIL
    for problem in problems[:20]:
        out.print(escape(problem), style="red")
    if problems:
        out.print(f"{len(problems)} bad line(s); nothing written", style="red")
        return EXIT_FAIL
    log = outcome_log(Path(args.log) / "outcomes" / "imported")
    accepted = sum(bool(log.offer(r)) for r in records)
    written = log.close(60)
    out.print(f"wrote {accepted:,} outcome(s) to {escape(str(Path(args.log) / 'outcomes'))}"
              + ("" if written else " (some could not be written: see the log)"))
    return EXIT_OK if written and accepted == len(records) else EXIT_FAIL


def _cmd_log(args, out: Console, err: Console) -> int:
    from engine.decision_log import read_log, summarise

    try:
        table = read_log(args.source)  # a folder, a file or a Redis stream
    except (OSError, ValueError) as exc:
        err.print(f"error: cannot read the log {escape(args.source)}: {escape(str(exc))}", style="red")
        return EXIT_FAIL
    summary = summarise(table)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        return EXIT_OK
    out.print(f"{summary['records']:,} decision record(s) in {escape(args.source)}")
    if not summary["records"]:
        return EXIT_OK
    out.print(f"from {summary['first_ts']} to {summary['last_ts']}; mean slate length "
              f"{summary['mean_slate_length']:.1f}; with propensities: {summary['with_propensities']:,}")
    policies = Table("policy", "version", "digest", "records", title="by policy revision")
    for row in summary["policies"]:
        policies.add_row(escape(row["policy"]), escape(str(row["policy_version"])),
                         escape(str(row["policy_digest"])[:12]), f"{row['records']:,}")
    out.print(policies)
    if summary["variants"]:
        variants = Table("experiment", "variant", "records", title="by experiment variant")
        for row in summary["variants"]:
            variants.add_row(escape(row["experiment"]), escape(row["variant"]), f"{row['records']:,}")
        out.print(variants)
    for key in ("statuses", "solvers", "relaxed"):
        if summary.get(key):
            out.print(f"{key}: " + ", ".join(f"{escape(str(k))} {v:,}" for k, v in summary[key].items()))
    if summary.get("dropped_note"):
        out.print(escape(summary["dropped_note"]), style="yellow")
    return EXIT_OK


def _cmd_replay(args, out: Console, err: Console) -> int:
    import os

    from engine.errors import PolicyInvalid
    from offline.evaluate import off_policy
    from offline.policies import load_version
    from offline.replay import ReplayError, replay
    from offline.report import print_report, to_json, write_report
    from offline.runner import RayUnavailable

    try:
        versions = [load_version(f) for f in args.policies]
    except PolicyInvalid as exc:
        err.print(f"error: {escape(str(exc))}", style="red")
        return EXIT_FAIL
    except OSError as exc:
        err.print(f"error: cannot read a policy file: {escape(str(exc))}", style="red")
        return EXIT_USAGE
    try:
        report = replay(args.log, versions, workers=args.workers, use_ray=args.ray is not None,
                        ray_address=args.ray or None, reward=args.reward_score,
                        position_weights=args.position_weights,
                        progress=not args.no_progress and not args.json)
        outcomes = args.outcomes or (os.path.join(args.log, "outcomes")
                                     if os.path.isdir(os.path.join(args.log, "outcomes")) else None)
        ope = (off_policy(report, outcomes, outcome=args.outcome, n_bootstrap=args.bootstrap)
               if outcomes else None)
    except (ReplayError, RayUnavailable, ValueError, OSError) as exc:
        err.print(f"error: {escape(str(exc))}", style="red")
        return EXIT_FAIL
    if args.json:
        sys.stdout.write(json.dumps(to_json(report, ope), indent=2, default=str) + "\n")
    else:
        print_report(report, ope, out)
        if ope is None:
            out.print("no outcomes (LOG/outcomes or --outcomes): direct metrics only")
    if args.report:
        paths = write_report(report, ope, args.report)
        (err if args.json else out).print("wrote " + ", ".join(str(p) for p in paths.values()))
    return EXIT_OK


def _live_version(spec: str, policies: str):
    """--live: a policy file, or the policy of that name in the `policies` folder (PolicyInvalid,
    LookupError naming the folder and the names it has, OSError)."""
    import os

    from engine.policy_loader import LoadedPolicy, check_folder
    from offline.policies import load_version, version_of

    if os.path.isfile(spec):
        return load_version(spec)
    if not os.path.isdir(policies):
        raise LookupError(f"--live {spec!r}: no such file, and no policies folder {policies!r} to look it up in")
    loaded = [r for _, r in check_folder(policies) if isinstance(r, LoadedPolicy)]
    for lp in loaded:
        if lp.name == spec:
            return version_of(lp)
    names = ", ".join(sorted(lp.name for lp in loaded)) or "none"
    raise LookupError(f"--live {spec!r}: no such file, and no valid policy of that name in {policies} "
                      f"(it has: {names})")


def _cmd_preview(args, out: Console, err: Console) -> int:
    import os

    from engine.errors import PolicyInvalid
    from offline.policies import load_version
    from offline.preview import PreviewError, preview, print_preview, write_preview
    from offline.replay import ReplayError

    try:
        proposed = load_version(args.proposed)
    except PolicyInvalid as exc:
        err.print(f"error: the proposed policy is invalid, nothing was previewed:\n{escape(str(exc))}", style="red")
        return EXIT_FAIL
    except OSError as exc:
        err.print(f"error: cannot read --proposed: {escape(str(exc))}", style="red")
        return EXIT_USAGE
    try:
        live = _live_version(args.live, args.policies)
    except PolicyInvalid as exc:
        err.print(f"error: the live policy is invalid:\n{escape(str(exc))}", style="red")
        return EXIT_FAIL
    except (LookupError, OSError) as exc:
        err.print(f"error: {escape(str(exc))}", style="red")
        return EXIT_USAGE
    outcomes = args.outcomes or (os.path.join(args.log, "outcomes")
                                 if os.path.isdir(os.path.join(args.log, "outcomes")) else None)
    try:
        pv = preview(args.log, live, proposed, sample=args.sample, sample_seed=args.sample_seed,
                     rule_costs=args.rule_costs,
                     outcomes=outcomes, outcome=args.outcome,
                     n_bootstrap=args.bootstrap, seed=args.seed)
    except (PreviewError, ReplayError, ValueError, OSError) as exc:
        err.print(f"error: {escape(str(exc))}", style="red")
        return EXIT_FAIL
    if args.json:
        sys.stdout.write(json.dumps(pv.to_json(), indent=2, default=str) + "\n")
    else:
        print_preview(pv, out)
        if outcomes is None:
            out.print("no outcomes (LOG/outcomes or --outcomes): direct metrics only")
    if args.report:
        paths = write_preview(pv, args.report)
        (err if args.json else out).print("wrote " + ", ".join(str(p) for p in paths.values()))
    return EXIT_OK


def _cmd_pareto(args, out: Console, err: Console) -> int:
    from offline.pareto import ParetoError, pareto, plot, write_points
    from offline.replay import ReplayError
    from offline.runner import RayUnavailable

    try:
        sweep = pareto(args.log, args.policy, vary=args.vary, metrics=args.metric, refine=args.refine,
                       workers=args.workers, use_ray=args.ray is not None, ray_address=args.ray or None,
                       progress=not args.no_progress and not args.json)
    except (ParetoError, ReplayError, RayUnavailable, OSError) as exc:
        err.print(f"error: {escape(str(exc))}", style="red")
        return EXIT_FAIL
    if args.out:
        write_points(sweep, args.out)
        plot(sweep, Path(args.out) / "frontier.png")
        (Path(args.out) / "pareto.json").write_text(json.dumps(sweep.to_json(), indent=2) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(sweep.to_json(), indent=2) + "\n")
        return EXIT_OK
    names = [m.name + (" (min)" if m.minimise else "") for m in sweep.metrics]
    table = Table("#", *[v.name for v in sweep.vary], *names, "", "file",
                  title=f"{len(sweep.frontier())} of {len(sweep.points)} points on the frontier "
                        f"({sweep.records:,} logged requests, {sweep.seconds:.1f} s)")
    for i, p in enumerate(sweep.points):
        style = None if p.frontier else "grey50"
        cells = [f"{x:g}" for x in p.values]
        if p.error:
            table.add_row(str(i), *cells, *["-"] * len(names), escape(p.error), "", style="red")
            continue
        table.add_row(str(i), *cells, *[f"{p.metrics[m.name]:.5g}" + (
                          f" [{p.ci[m.name][0]:.4g}, {p.ci[m.name][1]:.4g}]" if m.name in p.ci else "")
                          for m in sweep.metrics],
                      "frontier" if p.frontier else "dominated", escape(Path(p.file).name) if p.file else "",
                      style=style)
    out.print(table)
    if args.out:
        out.print(f"wrote {escape(args.out)}/point-NNN.yaml, frontier.png, pareto.json")
    return EXIT_OK


# ------------------------------------------------------------------------------- call / policies


def _channel(address: str, tls_ca: str | None = None):
    """A channel to `address`: plaintext, or TLS trusting the PEM file `tls_ca` (OSError if unreadable)."""
    import grpc

    limit = 64 * 1024 * 1024
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    if tls_ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)


def _open_channel(args, err: Console):
    try:
        return _channel(_client_address(args), getattr(args, "tls_ca", None))
    except OSError as exc:
        err.print(f"error: cannot read --tls-ca: {escape(str(exc))}", style="red")
        return None


def _print_rpc_error(err: Console, exc) -> None:
    import grpc

    from server.errors import FIELD_METADATA_KEY

    err.print(f"error: {exc.code().name}: {escape(exc.details() or '')}", style="red")
    fields = [v for k, v in (exc.trailing_metadata() or ()) if k == FIELD_METADATA_KEY]
    if fields:
        err.print(f"fields: {escape(', '.join(fields))}", style="red")
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        err.print("is a server running there? start one with: reranker serve --address HOST:PORT")


def _cmd_call(args, out: Console, err: Console) -> int:
    import grpc
    from google.protobuf import json_format

    from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
    from server.request_json import load_request

    try:
        request = load_request(args.file)
    except (OSError, ValueError) as exc:
        err.print(f"error: {escape(str(exc))}", style="red")
        return EXIT_USAGE
    channel = _open_channel(args, err)
    if channel is None:
        return EXIT_USAGE
    with channel:
        try:
            response = pb_grpc.RerankerStub(channel).Rerank(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            _print_rpc_error(err, exc)
            return EXIT_FAIL
    if args.json:
        out.print_json(json_format.MessageToJson(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))
    else:
        _print_response(out, response)
    return EXIT_OK


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _print_response(out: Console, resp) -> None:
    from server._gen.reranker.v1 import reranker_pb2 as pb

    explain = any(item.contributions for item in resp.items)
    columns = sorted({k for item in resp.items for k in item.contributions})
    digest = f" (digest {resp.policy_digest[:12]})" if resp.policy_digest else ""
    slate = Table(title=f"slate: policy {escape(resp.policy)} v{escape(resp.policy_version)}{digest}, "
                        f"{len(resp.items)} of {resp.eligible} eligible")
    if resp.HasField("experiment"):
        e = resp.experiment
        out.print(f"experiment {escape(e.experiment)}: variant {escape(e.variant)}"
                  f"{' (holdout)' if e.holdout else ''}, bucket {e.bucket} of 10000 ({escape(e.unit)})")
    if resp.HasField("propensities"):
        p = resp.propensities
        out.print(f"exploration {escape(p.scheme)}: seed {p.seed}, P(slate) = {p.joint:.3g}"
                  + (f", marginals from {p.marginal_samples} draws" if p.marginal else ""))
    slate.add_column("position", justify="right")
    slate.add_column("item_id", no_wrap=True)
    slate.add_column("index", justify="right")
    slate.add_column("utility", justify="right")
    for col in columns:
        slate.add_column(escape(col), justify="right")
    for item in resp.items:
        row = [str(item.position), escape(item.item_id), str(item.index), _fmt(item.utility)]
        if explain:
            row += [_fmt(item.contributions[c]) if c in item.contributions else "" for c in columns]
        slate.add_row(*row)
    out.print(slate)

    d = resp.diagnostics
    status = pb.SlateStatus.Name(d.status).removeprefix("SLATE_STATUS_").lower()
    bound = _fmt(d.bound) if d.HasField("bound") else "-"
    if not d.HasField("gap"):
        gap = "-"
    elif d.gap_kind == "absolute":  # a ratio would mean nothing: bound <= 0 or objective < 0
        gap = f"{_fmt(d.gap)} (absolute)"
    else:
        gap = f"{d.gap:.3%}"
    if d.bound_method:
        bound = f"{bound} ({escape(d.bound_method)})"
    out.print(f"solver: {escape(d.solver)}   status: {status}   objective: {_fmt(d.objective)}   "
              f"bound: {bound}   gap: {gap}")
    out.print(f"budget: {d.budget_ms:g} ms   exact solver: {escape(d.exact_status) or 'not run'}")
    for conflict in d.conflicts:
        out.print(f"conflict: {escape(conflict.description)}")
    if d.boosts:
        out.print("exposure boosts: " + "  ".join(f"{escape(k)}={v:.4g}" for k, v in sorted(d.boosts.items())))
    if d.HasField("exposure_lp"):
        lp = d.exposure_lp
        shares = "  ".join(f"{escape(k)}={v:.3g}" for k, v in sorted(lp.expected_exposure.items()))
        out.print(f"exposure LP: {escape(lp.status)}   expected exposure: {shares}")
    stages = ["decode", "compile", "solve", "report", "encode", "total"]
    stages += sorted(k for k in d.elapsed_us if k not in stages)
    out.print("elapsed_us: " + "  ".join(f"{s}={d.elapsed_us[s]:.0f}" for s in stages if s in d.elapsed_us))

    if d.constraints:
        table = Table(title="constraints")
        table.add_column("name", no_wrap=True)
        for name in ("kind", "hard", "satisfied", "slack", "violation", "penalty", "relaxed"):
            table.add_column(name)
        table.add_column("reason", overflow="fold")
        has_cost = any(c.HasField("cost") for c in d.constraints)
        if has_cost:
            table.add_column("cost", justify="right")
        for c in d.constraints:
            row = [escape(c.name), c.kind, _yes(c.hard), _yes(c.satisfied), _fmt(c.slack),
                   _fmt(c.violation), _fmt(c.penalty), _yes(c.relaxed), escape(c.reason)]
            if has_cost:
                row.append(_fmt(c.cost) if c.HasField("cost") else "")
            table.add_row(*row)
        out.print(table)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _cmd_policies(args, out: Console, err: Console) -> int:
    import grpc

    from server._gen.reranker.v1 import reranker_pb2 as pb
    from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc

    channel = _open_channel(args, err)
    if channel is None:
        return EXIT_USAGE
    with channel:
        try:
            resp = pb_grpc.RerankerStub(channel).ListPolicies(pb.ListPoliciesRequest(), timeout=args.timeout)
        except grpc.RpcError as exc:
            _print_rpc_error(err, exc)
            return EXIT_FAIL
    table = Table(title=f"{len(resp.policies)} policies at {escape(args.address)}")
    table.add_column("name", no_wrap=True)
    for name in ("version", "slate_size", "solver", "budget_ms", "constraints", "source", "digest", "file"):
        table.add_column(name, overflow="fold")
    for p in resp.policies:
        table.add_row(escape(p.name), escape(p.version), str(p.slate_size), p.solver_mode,
                      _fmt(p.budget_ms), escape(", ".join(p.constraints)), escape(p.source), p.digest[:12],
                      _file_state(p))
    out.print(table)
    for p in resp.policies:
        if p.file_invalid:
            served = "its last good version (restored at start-up)" if p.last_good else "the version above"
            out.print(f"{escape(p.name)}: {escape(p.source)} is invalid on disk (sha256 {p.file_digest[:12]}); "
                      f"{served} stays live: {escape(p.file_error)}", style="red")
    return EXIT_OK


def _file_state(p) -> str:
    """The policy file on disk now, for the `file` column."""
    if p.file_invalid:
        return "INVALID (last good)" if p.last_good else "INVALID"
    if p.file_digest and p.file_digest != p.digest:
        return f"changed ({p.file_digest[:12]})"
    return "ok" if p.file_digest else ""


# ----------------------------------------------------------------------------------- schema


def _cmd_schema(args, out: Console, err: Console) -> int:
    from engine.policy_loader import policy_json_schema

    text = json.dumps(policy_json_schema(), indent=2) + "\n"
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            err.print(f"error: cannot write {escape(args.output)}: {escape(str(exc))}", style="red")
            return EXIT_FAIL
        out.print(f"wrote {escape(args.output)}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
