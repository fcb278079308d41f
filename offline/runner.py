"""Where a replay's chunk tasks run: local processes, or Ray (Ray Data over the log's chunks).

Generic: a chunk task maps one `offline.replay.Chunk` to (chunk index, rows, result), a sequential
task runs alone over the whole log; the caller merges the chunk results in log order
(offline.replay.merge_in_order), so every mode gives the same numbers.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

ChunkResults = dict  # chunk index -> result


class RayUnavailable(RuntimeError):
    """Ray could not be started or reached."""


@contextlib.contextmanager
def progress_bar(total: int, show: bool, what: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over `total` records when `show` (to stderr); yields `advance(n)`."""
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    )

    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("records"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=sys.stderr)) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _call(task):
    return task()


def run_processes(chunk_task, chunks: Sequence, sequential: Sequence, *, workers: int,
                  advance: Callable[[int], None]) -> tuple[ChunkResults, list]:
    """Run `chunk_task` over every chunk and each sequential task on `workers` local processes.
    Returns (index -> result, sequential results). The processes are forked where the platform
    can (Linux: they start with this process's imports and compiled kernels, in milliseconds),
    spawned elsewhere (each imports the engine again: seconds)."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods and sys.platform == "linux" else "spawn")
    results: ChunkResults = {}
    whole = []
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending = {pool.submit(_call, t) for t in sequential}
        seq = set(pending)
        pending |= {pool.submit(chunk_task, c) for c in chunks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                if f in seq:
                    whole.append(f.result())
                else:
                    index, rows, out = f.result()
                    results[index] = out
                    advance(rows)
    return results, whole


def start_ray(address: str | None) -> None:
    """Connect to the Ray cluster at `address`, or start a local one on this machine's CPUs when
    it is None. Raises RayUnavailable with the reason."""
    import ray

    if address and address != "auto":
        _check_reachable(address)
    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, log_to_driver=False, include_dashboard=False)
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        where = f"at {address}" if address else "locally"
        raise RayUnavailable(f"cannot start or reach Ray {where}: {type(e).__name__}: {e}") from None


#: seconds to wait for a TCP connection to a Ray address before calling it unreachable (Ray's
#: own client retries for minutes)
CONNECT_TIMEOUT_S = 5.0


def _check_reachable(address: str) -> None:
    """Raise RayUnavailable unless something accepts TCP connections at `address`
    ("host:port", or "ray://host:port" for Ray Client)."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RayUnavailable(f"--ray: expected HOST:PORT (or ray://HOST:PORT, or auto), got {address!r}")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise RayUnavailable(f"cannot reach Ray at {address}: {e.strerror or e} "
                             f"(is a Ray head running there? `ray start --head` starts one)") from None


def _chunk_batch(batch: dict, task_blob: bytes) -> dict:
    """Ray Data map_batches function: runs the chunk task on each chunk of its batch. Ray reuses
    its worker processes between tasks, so the imports and the unpickled policies (cached by
    offline.replay) are paid once per worker, not once per replay."""
    task = _TASKS.get(task_blob)
    if task is None:
        _TASKS.clear()
        task = _TASKS[task_blob] = pickle.loads(task_blob)
    index, rows, out = [], [], []
    for blob in batch["chunk"]:
        i, n, result = task(pickle.loads(blob))
        index.append(i)
        rows.append(n)
        out.append(pickle.dumps(result))
    return {"index": index, "rows": rows, "result": out}


_TASKS: dict = {}


def run_ray(chunk_task, chunks: Sequence, sequential: Sequence, *, address: str | None,
            advance: Callable[[int], None]) -> tuple[ChunkResults, list]:
    """The same on Ray: Ray Data maps the chunk task over the chunks as Ray tasks (stateless, so
    no actor pool to start per replay, and none to starve Ray Data's own tasks on a small
    machine); each sequential task is a Ray task."""
    import ray
    import ray.data

    start_ray(address)
    seq_refs = [ray.remote(num_cpus=0.5)(_call).remote(t) for t in sequential]
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_items([{"chunk": pickle.dumps(c)} for c in chunks],
                             override_num_blocks=max(1, len(chunks)))
    mapped = ds.map_batches(_chunk_batch, fn_args=(pickle.dumps(chunk_task),), batch_size=1, num_cpus=1)
    results: ChunkResults = {}
    for row in mapped.iter_rows():
        results[int(row["index"])] = pickle.loads(row["result"])
        advance(int(row["rows"]))
    return results, ray.get(seq_refs)
