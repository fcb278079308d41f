"""`reranker simulate`: long-term simulation of policies on common random numbers.

    reranker simulate --scenario S.yaml --policy A.yaml --policy B.yaml [--seeds N]
                      [--workers N | --ray [ADDRESS]] [--out DIR] [--json] [--no-progress]

The first policy is the baseline: every other one is compared with it, paired by seed. server/cli.py
adds this command with `add_parser(sub)`; `run(args, out, err)` runs it (exit 0 ok, 1 failure,
2 unreadable or invalid input).
"""

from __future__ import annotations

import argparse
import json

from rich.markup import escape

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_parser(sub) -> argparse.ArgumentParser:
    """Add `simulate` to the `reranker` subcommands."""
    p = sub.add_parser("simulate", help="long-term simulation (LTV, retention, seller health) of policies "
                                        "on common random numbers, compared with the first")
    p.add_argument("--scenario", required=True, metavar="S.yaml", help="the scenario file")
    p.add_argument("--policy", action="append", required=True, metavar="FILE.yaml",
                   help="a policy file (repeat: the first is the baseline the others are compared with)")
    p.add_argument("--seeds", type=_positive_int, default=None, metavar="N",
                   help="seeds 0..N-1 (default: the scenario's `seeds`)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="run on N local processes")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray (a local Ray when no ADDRESS is given)")
    p.add_argument("--out", metavar="DIR", help="write DIR/simulation.png, DIR/report.html and DIR/simulation.json")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args, out, err) -> int:
    from engine.errors import PolicyInvalid
    from offline.policies import load_version
    from offline.runner import RayUnavailable
    from simulation.environment import SimulationError
    from simulation.report import print_report, write_report
    from simulation.run import simulate
    from simulation.scenario import load_scenario

    if args.workers and args.ray is not None:
        err.print("error: --workers and --ray: choose one", style="red")
        return EXIT_USAGE
    try:
        scenario = load_scenario(args.scenario)
        versions = [load_version(p) for p in args.policy]
    except PolicyInvalid as exc:  # ScenarioInvalid included
        err.print(f"error:\n{escape(str(exc))}", style="red")
        return EXIT_USAGE
    except OSError as exc:
        err.print(f"error: {escape(str(exc))}", style="red")
        return EXIT_USAGE
    try:
        sim = simulate(scenario, versions, seeds=args.seeds, workers=args.workers, ray=args.ray,
                       progress=not args.no_progress and not args.json, scenario_source=args.scenario)
    except PolicyInvalid as exc:
        err.print(f"error:\n{escape(str(exc))}", style="red")
        return EXIT_USAGE
    except (SimulationError, RayUnavailable) as exc:
        err.print(f"error: {escape(str(exc))}", style="red")
        return EXIT_FAIL
    if args.json:
        out.print_json(json.dumps(sim.to_json()))
    else:
        print_report(sim, out)
    if args.out:
        paths = write_report(sim, args.out)
        if not args.json:
            out.print("wrote " + ", ".join(escape(str(p)) for p in paths))
    return EXIT_OK
