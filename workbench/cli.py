"""`reranker workbench`: the policy workbench web page (server/cli.py hooks `add_parser`).

    reranker workbench --policies policies --log logs/decisions [--experiments DIR]
                       [--host 127.0.0.1] [--port 8750] [--read-only] [--token T] [--workers N]

The page is bound to localhost by default. Bound beyond it, every promote needs the token
(--token or RERANKER_WORKBENCH_TOKEN), and the workbench refuses to start without one unless
--read-only. Port 0 picks a free port; the address is printed as `workbench listening on URL`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

DEFAULT_PORT = 8750


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("workbench", help="the policy workbench web page: edit, preview, Pareto sweep and "
                                         "promote policies (localhost by default)")
    p.add_argument("--policies", default="policies", metavar="DIR",
                   help="the policy folder the live servers watch (default %(default)s)")
    p.add_argument("--experiments", metavar="DIR", help="the experiment folder to list (optional)")
    p.add_argument("--log", metavar="DIR|FILE|redis://HOST:PORT/DB",
                   help="the decision log that previews and sweeps replay (without it: edit and promote only)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s; 0: a free one)")
    p.add_argument("--read-only", action="store_true", help="no promote: the page only shows and previews")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="replay previews and sweeps on N local processes (default: in the page's process)")
    p.add_argument("--token", default=None,
                   help="the token every promote must send (default: $RERANKER_WORKBENCH_TOKEN)")
    p.set_defaults(func=run)
    return p


def run(args, out, err) -> int:
    """Start the page and serve until SIGINT / SIGTERM. Exit 2 for a configuration refused."""
    import socket

    import uvicorn

    from workbench.app import TOKEN_ENV, Config, create_app
    from workbench.folder import WorkbenchError

    # promotes and refusals are logged on stderr (an audit trail of what was written, by whom)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if args.log is not None and "://" not in args.log and not os.path.exists(args.log):
        err.print(f"error: --log: no such file or folder: {args.log}", style="red")
        return 2
    config = Config(policies=args.policies, log=args.log, experiments=args.experiments, host=args.host,
                    read_only=args.read_only, token=token, workers=args.workers)
    try:
        app = create_app(config)
    except (WorkbenchError, FileNotFoundError) as e:
        err.print(f"error: {e}", style="red")
        return 2
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        err.print(f"error: cannot bind {args.host}:{args.port}: {e.strerror or e}", style="red")
        return 2
    sock.listen(128)  # connections made before uvicorn serves wait in the backlog, never refused
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    mode = "read-only" if config.read_only else ("promote needs the token" if token else "promote open (localhost)")
    # flush at once: tests and scripts read this line to find the port
    print(f"workbench listening on http://{shown}:{port}/ ({mode})", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    server.run(sockets=[sock])
    return 0
