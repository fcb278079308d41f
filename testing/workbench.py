"""A sample decision log for the workbench (`make workbench`, its tests and its benchmark):
synthetic requests served by the policies of a folder, as the server logs them, with simulated
clicks; and copies of a policy folder for tests.

    python -m testing.workbench --policies policies --out data/workbench-log [--records 3000]

Silent and quick when OUT already holds a log. The candidates are testing.engines' random ones
(every attribute and score the example policies use), served under `--policy` (default
home_feed); clicks follow a known position-based model (testing.logs.simulate_clicks), so the
preview has off-policy estimates too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def copy_policies(src: str | Path, dst: str | Path, *, solver_mode: str | None = None) -> Path:
    """A copy of a policy folder's files; `solver_mode` rewrites every `mode:` of the solver
    sections (e.g. "greedy", for a quick demo or test whose previews skip the exact solvers)."""
    import re

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(src).iterdir()):
        if f.is_file():
            text = f.read_text(encoding="utf-8")
            if solver_mode is not None and f.suffix in (".yaml", ".yml"):
                text = re.sub(r"^(solver:\n(?:[ \t]+.*\n)*?[ \t]+mode:[ \t]*)\S+", rf"\g<1>{solver_mode}", text,
                              flags=re.M)
            (dst / f.name).write_text(text, encoding="utf-8")
    return dst


def make_log(policies: str, out: str, *, policy: str = "home_feed", records: int = 3000,
             candidates: int = 100, seed: int = 0) -> Path:
    from engine.engine import Engine
    from testing.logs import simulate_clicks, synthetic_log

    folder = Path(out)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    engine = Engine.from_directory(policies)
    synthetic_log(tmp, engine, policy, records, candidates_per_request=candidates, seed=seed)
    simulate_clicks(tmp, seed=seed)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--policies", default="policies")
    p.add_argument("--out", default="data/workbench-log")
    p.add_argument("--policy", default="home_feed", help="the policy that serves the logged requests")
    p.add_argument("--records", type=int, default=3000)
    p.add_argument("--candidates", type=int, default=100, help="candidates per request")
    args = p.parse_args(argv)
    if any(Path(args.out).glob("*.parquet")):
        return 0
    print(f"writing a sample decision log of {args.records:,} requests to {args.out} ...", file=sys.stderr)
    make_log(args.policies, args.out, policy=args.policy, records=args.records, candidates=args.candidates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
