"""Exposure ledger: cumulative position-weighted exposure and merit per group, per namespace.

A namespace is one amortized-fairness rule of one policy, spelled "<policy>/<rule>" (for example
"marketplace/new_sellers"). For every group of the rule's attribute the ledger keeps two running
sums: the exposure the group received (position weights of its items in answered slates) and its
merit (see `engine.amortized.exposure_deltas`). The amortized controller reads a snapshot before a
request is solved and records what the answered slate added afterwards.

Two backends share the `Ledger` protocol:

- `InProcessLedger`: a dict behind a lock. The embedded default; one process, lost on restart.
- `RedisLedger`: one Redis hash per namespace, shared by every replica, incremented atomically by
  a Lua script (Redis runs a script as one step: no other client sees it half done). Written so
  that a request is never failed, nor held up for long, by Redis:

  * every Redis call has a socket timeout (`timeout_s`) and no client-side retries, so a request
    makes at most one round trip (plus a connect when the pool opens a connection), each bounded
    by `timeout_s`;
  * the first failure starts an *outage*: it is logged once (WARNING) and counted, and from then
    on no request touches Redis. `snapshot` answers from the local mirror (the last state read
    from Redis, plus this process's writes since, plus its queued deltas) and `record` adds to a
    local queue that is coalesced per (namespace, group), so it is bounded by the number of
    groups, not of requests, and loses nothing;
  * a background thread probes Redis every `retry_interval_s`; when it answers, the queue is
    written (one atomic script call), the mirror re-read, the recovery logged (INFO), and requests
    use Redis again;
  * updates are applied exactly once even when a write times out after Redis applied it: every
    write carries (writer id, sequence number), the script skips a sequence number it has already
    seen for that writer, and a write whose outcome is unknown is retried verbatim (same writer,
    same number). Writer ids are per thread and per `RedisLedger` instance; Redis keeps the last
    sequence number of each writer for `writer_ttl_s` (default 7 days), so only a write left in
    doubt for longer than that could be counted twice.

Nothing here raises into the caller once constructed: errors become stats and log lines. Invalid
deltas (non-finite or non-numeric values, or magnitudes above `MAX_DELTA`) are dropped and counted
in `stats.rejected`, because one poisoned increment would otherwise block the queue forever, or
outweigh every other request for good. Totals read back that are non-finite or above `MAX_TOTAL`
(only a ledger written by an older version, or by hand, holds such values) are ignored: the
group reads as 0, a WARNING names the namespace once, and `stats.ignored` counts them (per read);
the next write to that group's total replaces it by the write's delta, which repairs the hash. To
reset a namespace, delete its hash (`DEL reranker:ledger:ns:<policy>/<rule>`).

When Redis loses data (a restart without persistence, FLUSHALL), a namespace's write counter
goes back: that is logged (WARNING, once per namespace and event) and counted in
`stats.data_lost`; the totals start again from what Redis holds, so the amortized rules forget
the exposure handed out before. The read that notices it also reloads the script (a restarted
Redis has an empty script cache), so the writes that follow are not refused with NOSCRIPT. The
epoch is what tells a lost hash apart from reads that merely finished out of order: a hash that
is gone, or re-created by any replica, reads back without this process's last epoch.

Redis layout (prefix `key_prefix`, default "reranker:ledger:"):
    <prefix>ns:<namespace>    hash: "exp:<group>" -> float, "merit:<group>" -> float,
                              "_v" -> number of writes applied (orders reads and writes),
                              "_epoch" -> token of the write that created the hash
    <prefix>writer:<id>       string: last applied sequence number of one writer (expires)
The script touches several keys, so on Redis Cluster all of them would have to share a hash
slot; this module targets a single Redis (or a primary with replicas), not Cluster.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: group -> (exposure, merit)
Totals = dict[str, tuple[float, float]]

_Acc = dict[str, list[float]]  # group -> [exposure, merit], mutable accumulator

#: Largest |exposure| or |merit| one record() may add per group. engine.amortized bounds both by
#: the slate's position weights (at most 1e6 each, 1000 positions): anything larger is not ours.
MAX_DELTA = 1e9
#: Largest plausible total: 1e15 units is ~1e14 requests of slate exposure 10. A total above it,
#: or not finite, was not written by bounded increments and is ignored when read.
MAX_TOTAL = 1e15


@dataclass(frozen=True)
class LedgerStats:
    """Counters since the ledger was created (plain ints; a copy, safe to keep)."""

    outages: int = 0  # times Redis went from reachable to unreachable
    errors: int = 0  # failed Redis calls: requests and recovery attempts
    queued: int = 0  # record() calls kept locally instead of written (outage or failed write)
    flushed: int = 0  # queued record() calls that have reached Redis since
    duplicates: int = 0  # retried writes Redis had already applied (skipped, not counted twice)
    rejected: int = 0  # (group, delta) entries dropped by record(): non-finite, too large, not numbers
    ignored: int = 0  # totals read back non-finite or above MAX_TOTAL (read as 0)
    data_lost: int = 0  # times a namespace's Redis hash went back (Redis lost data)

    @property
    def pending(self) -> int:
        """record() calls held locally, not yet known to be in Redis."""
        return self.queued - self.flushed


@runtime_checkable
class Ledger(Protocol):
    """Cumulative exposure and merit per group, per namespace. Implementations are thread-safe."""

    def snapshot(self, namespace: str) -> Totals:
        """group -> (exposure, merit) for one namespace; {} for an unknown namespace."""
        ...

    def record(self, namespace: str, deltas: Mapping[str, tuple[float, float]]) -> None:
        """Add (exposure, merit) deltas per group to a namespace."""
        ...

    def close(self) -> None:
        """Release resources (a Redis ledger first tries to flush what it still holds)."""
        ...


def _clean(deltas: Mapping[str, tuple[float, float]]) -> tuple[_Acc, int]:
    """Valid deltas as floats, and how many entries were dropped."""
    out: _Acc = {}
    bad = 0
    try:
        items = list(deltas.items())
    except Exception:  # not a mapping at all
        return out, 1
    for group, pair in items:
        try:
            e, m = float(pair[0]), float(pair[1])
        except Exception:
            bad += 1
            continue
        if not (math.isfinite(e) and math.isfinite(m)) or abs(e) > MAX_DELTA or abs(m) > MAX_DELTA:
            bad += 1
            continue
        acc = out.setdefault(str(group), [0.0, 0.0])
        acc[0] += e
        acc[1] += m
    return out, bad


def _sane(acc: _Acc) -> tuple[_Acc, int]:
    """Totals with non-finite or implausible values (|v| > MAX_TOTAL) read as 0, and how many."""
    bad = 0
    for pair in acc.values():
        for k in (0, 1):
            v = pair[k]
            if not math.isfinite(v) or abs(v) > MAX_TOTAL:
                pair[k] = 0.0
                bad += 1
    return acc, bad


def _warn_ignored(warned: set[str], namespace: str, bad: int) -> None:
    first = ("ignored", namespace) not in warned
    warned.add(("ignored", namespace))
    log.log(logging.WARNING if first else logging.DEBUG,
            "ledger %r: %d stored total(s) are not finite or above %.0e (written by an older "
            "version?); read as 0%s", namespace, bad, MAX_TOTAL,
            "; delete the namespace's hash to reset it; further reads are counted in stats.ignored"
            if first else "")


def _warn_rejected(warned: set[str], namespace: str, bad: int) -> None:
    """A WARNING the first time a namespace gets invalid deltas, DEBUG after (they are counted)."""
    first = namespace not in warned
    warned.add(namespace)
    log.log(logging.WARNING if first else logging.DEBUG,
            "ledger %r: dropped %d invalid delta(s): each needs two finite numbers (exposure, "
            "merit) of magnitude <= %.0e%s", namespace, bad, MAX_DELTA, "; further drops are counted in stats.rejected" if first else "")


def _add(into: _Acc, deltas: _Acc | None) -> None:
    if deltas:
        for group, (e, m) in deltas.items():
            acc = into.setdefault(group, [0.0, 0.0])
            acc[0] += e
            acc[1] += m


def _frozen(acc: _Acc) -> Totals:
    return {g: (v[0], v[1]) for g, v in acc.items()}


class InProcessLedger:
    """The embedded ledger: totals in a dict, one lock. Lost when the process exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, _Acc] = {}
        self._rejected = 0
        self._warned: set = set()  # namespaces (and ("ignored", namespace)) warned about

    def snapshot(self, namespace: str) -> Totals:
        with self._lock:
            return _frozen(self._totals.get(namespace, {}))

    def record(self, namespace: str, deltas: Mapping[str, tuple[float, float]]) -> None:
        clean, bad = _clean(deltas)
        with self._lock:
            self._rejected += bad
            if clean:
                _add(self._totals.setdefault(namespace, {}), clean)
            if bad:
                _warn_rejected(self._warned, namespace, bad)

    def close(self) -> None:
        pass

    @property
    def healthy(self) -> bool:
        return True

    @property
    def stats(self) -> LedgerStats:
        with self._lock:
            return LedgerStats(rejected=self._rejected)


# KEYS[1]: the writer's sequence key; KEYS[2..]: namespace hashes.
# ARGV: seq, writer_ttl_s, deltas as JSON: [[[group, exposure, merit], ...] for each KEYS[2..]],
# an epoch token: the first write to a hash that does not exist stores it under "_epoch", so a
# hash that Redis lost and a later write re-created reads back with another epoch.
# Returns {1, v_2, ..., v_k} when applied (v_i: the new value of the hash's "_v" field, a write
# counter the local mirror uses to tell which of its own writes a read already includes), 0 when
# this (writer, seq) was applied before. A stored total that is not a number, not finite or
# above MAX_TOTAL (an older version's, or written by hand) counts as 0, so the write repairs it.
# Key types are checked before the first write, so a
# failing call changes nothing (scripts are not rolled back). Sums are computed in Lua (IEEE
# doubles; JSON numbers written by Python's repr parse back exactly) and stored with 17
# significant digits, which round-trip exactly: one HMGET and one HSET per 100 groups.
_LUA = """
local function total(s)  -- a stored total; a bad one (written before MAX_TOTAL) counts as 0
  local x = tonumber(s) or 0
  if x ~= x or x > __MAX_TOTAL__ or x < -__MAX_TOTAL__ then return 0 end
  return x
end
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if seq <= last then return 0 end
for i = 2, #KEYS do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'hash' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ledger key ' .. KEYS[i] .. ' holds a ' .. t)
  end
end
local batch = cjson.decode(ARGV[3])
local versions = {1}
for i = 2, #KEYS do
  local rows = batch[i - 1]
  local done = 0
  while done < #rows do
    local m = math.min(100, #rows - done)
    local fields = {}
    for j = 1, m do
      local g = rows[done + j][1]
      fields[2 * j - 1] = 'exp:' .. g
      fields[2 * j] = 'merit:' .. g
    end
    local current = redis.call('HMGET', KEYS[i], unpack(fields))
    local out = {}
    for j = 1, m do
      local row = rows[done + j]
      out[4 * j - 3] = fields[2 * j - 1]
      out[4 * j - 2] = string.format('%.17g', total(current[2 * j - 1]) + row[2])
      out[4 * j - 1] = fields[2 * j]
      out[4 * j] = string.format('%.17g', total(current[2 * j]) + row[3])
    end
    redis.call('HSET', KEYS[i], unpack(out))
    done = done + m
  end
  redis.call('HSETNX', KEYS[i], '_epoch', ARGV[4])
  versions[i] = redis.call('HINCRBY', KEYS[i], '_v', 1)
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return versions
""".replace("__MAX_TOTAL__", "%.17g" % MAX_TOTAL)


@dataclass(eq=False)
class _Batch:
    """One write: deltas for one or more namespaces under one (writer, seq)."""

    writer: str
    seq: int
    deltas: dict[str, _Acc]  # namespace -> group -> [exposure, merit]
    count: int  # record() calls it carries (for stats)


class _Mirror:
    """Local view of one namespace (guarded by the ledger's lock): the totals of the last read
    from Redis, at hash version `version`, plus this process's writes applied after that version
    (`recent`). A write whose version is <= the read's is already in the read's totals."""

    __slots__ = ("version", "totals", "recent", "ticket", "fetched", "epoch")
    MAX_RECENT = 256

    def __init__(self) -> None:
        self.version = -1  # never read
        self.totals: _Acc = {}
        self.recent: list[tuple[int, _Acc]] = []
        self.ticket = 0  # local number of the read stored last (reads may finish out of order)
        self.fetched: float | None = None  # monotonic time of that read
        self.epoch: str | None = None  # the hash's "_epoch" at that read (None: no hash yet)

    def store_read(self, ticket: int, version: int, totals: _Acc, epoch: str | None = None) -> bool:
        """Store a read; True when it shows that Redis lost data: the hash this mirror had read
        is gone (no epoch now) or was re-created (another epoch)."""
        if ticket < self.ticket:  # an older read that finished late
            return False
        lost = self.epoch is not None and epoch != self.epoch
        if lost:                # Redis lost data (a restart without persistence, a flush):
            self.recent = []    # what it holds now is the truth
        elif version < self.version:  # same hash, an earlier state: a read that Redis ran before
            return False              # the one stored last (concurrent reads): keep the newer
        else:
            self.recent = [(v, d) for v, d in self.recent if v > version]
        self.ticket, self.version, self.totals, self.epoch = ticket, version, totals, epoch
        self.fetched = time.monotonic()
        return lost

    def add_write(self, version: int, deltas: _Acc) -> None:
        if version <= self.version:
            return
        self.recent.append((version, deltas))
        if len(self.recent) > self.MAX_RECENT:  # written often, rarely read: fold them in (the
            for _, d in self.recent:           # next read replaces the totals anyway)
                _add(self.totals, d)
            self.recent = []

    def view_into(self, acc: _Acc) -> None:
        _add(acc, self.totals)
        for _, d in self.recent:
            _add(acc, d)


class _Writer:
    __slots__ = ("key", "seq")

    def __init__(self, key: str) -> None:
        self.key = key
        self.seq = 0


def _redacted(url: str) -> str:
    """The URL without credentials, for log lines."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"
    except ValueError:
        return "<redis url>"


class RedisLedger:
    """The shared ledger: one Redis hash per namespace, atomic increments, a local mirror and a
    coalesced queue for outages (see the module docstring for the guarantees).

    Construction raises ValueError for bad arguments; an unreachable Redis does not raise, the
    ledger starts in an outage and catches up when Redis answers. `max_staleness_s` > 0 lets
    `snapshot` answer from the mirror when it was read from Redis less than that long ago (this
    process's own writes are always in it), saving a round trip per request at the price of not
    seeing other replicas' writes for up to that long; 0 (the default) reads Redis every time.
    """

    def __init__(self, url: str, *, key_prefix: str = "reranker:ledger:", timeout_s: float = 0.05,
                 retry_interval_s: float = 1.0, max_staleness_s: float = 0.0,
                 writer_ttl_s: int = 7 * 24 * 3600) -> None:
        for name, value in (("timeout_s", timeout_s), ("retry_interval_s", retry_interval_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"RedisLedger {name}: must be a number > 0, got {value!r}")
        if not (isinstance(max_staleness_s, (int, float)) and max_staleness_s >= 0):
            raise ValueError(f"RedisLedger max_staleness_s: must be a number >= 0, got {max_staleness_s!r}")
        if not (isinstance(writer_ttl_s, int) and writer_ttl_s >= 1):
            raise ValueError(f"RedisLedger writer_ttl_s: must be an integer >= 1, got {writer_ttl_s!r}")
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:
            self._client = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0), decode_responses=True)
        except ValueError as e:
            raise ValueError(f"RedisLedger url: {e}") from None
        self._where = _redacted(url)
        self._prefix = key_prefix
        self._ttl = writer_ttl_s
        self._retry_interval_s = float(retry_interval_s)
        self._max_staleness_s = float(max_staleness_s)
        self._script = self._client.register_script(_LUA)

        self._lock = threading.Lock()
        self._healthy = True
        self._closed = threading.Event()
        self._recovery: threading.Thread | None = None
        self._outage_since = 0.0
        self._mirror: dict[str, _Mirror] = {}  # namespace -> last read + own writes since
        self._tickets = itertools.count(1)  # numbers the reads, see _Mirror.store_read
        self._pending: dict[str, _Acc] = {}  # never sent: coalesced per namespace and group
        self._pending_count = 0  # record() calls merged into _pending
        self._in_doubt: list[_Batch] = []  # sent, outcome unknown: retried verbatim
        self._n = dict(outages=0, errors=0, queued=0, flushed=0, duplicates=0, rejected=0,
                       ignored=0, data_lost=0)
        self._warned: set = set()  # namespaces (and ("ignored", namespace)) warned about
        self._instance = uuid.uuid4().hex[:12]
        self._writer_ids = itertools.count(1)
        self._local = threading.local()

        try:  # first contact, bounded by timeout_s; failing starts an outage
            self._client.ping()
            self._client.script_load(_LUA)
        except Exception as e:  # noqa: BLE001 - any failure is an outage, never the caller's
            self._fail(e)

    # -- public API -------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """True when requests use Redis; False during an outage (answers come from the mirror)."""
        return self._healthy

    @property
    def stats(self) -> LedgerStats:
        with self._lock:
            return LedgerStats(**self._n)

    def snapshot(self, namespace: str) -> Totals:
        """group -> (exposure, merit). Reads Redis (one HGETALL) when healthy, else the mirror."""
        if self._healthy:
            with self._lock:
                mirror = self._mirror.get(namespace)
                if (self._max_staleness_s > 0 and mirror is not None and mirror.fetched is not None
                        and time.monotonic() - mirror.fetched < self._max_staleness_s):
                    return self._view(namespace)
                ticket = next(self._tickets)
            try:
                version, totals, epoch = self._parse(self._client.hgetall(self._hash_key(namespace)))
            except Exception as e:  # noqa: BLE001
                self._fail(e)
            else:
                with self._lock:
                    lost = self._store_read(namespace, ticket, version, totals, epoch)
                    view = self._view(namespace)
                if lost:  # a restarted Redis has lost its script cache too: reload it now, so
                    try:  # that the next write is not a NOSCRIPT outage
                        self._client.script_load(_LUA)
                    except Exception as e:  # noqa: BLE001
                        self._fail(e)
                return view
        with self._lock:
            return self._view(namespace)

    def record(self, namespace: str, deltas: Mapping[str, tuple[float, float]]) -> None:
        """Add deltas: one atomic script call when healthy, else into the local queue."""
        clean, bad = _clean(deltas)
        if bad:
            with self._lock:
                self._n["rejected"] += bad
                _warn_rejected(self._warned, namespace, bad)
        if not clean:
            return
        with self._lock:
            if not self._healthy:
                _add(self._pending.setdefault(namespace, {}), clean)
                self._pending_count += 1
                self._n["queued"] += 1
                return
        writer = self._writer()
        writer.seq += 1
        batch = _Batch(writer.key, writer.seq, {namespace: clean}, 1)
        try:
            versions = self._send(batch)
        except Exception as e:  # noqa: BLE001 - in doubt: keep it, retry it verbatim later
            with self._lock:
                self._in_doubt.append(batch)
                self._n["queued"] += 1
            self._fail(e)
            return
        if versions:
            with self._lock:
                self._mirror_of(namespace).add_write(versions[namespace], clean)

    def close(self) -> None:
        """Stop the recovery thread, try once to write what is still held locally (each Redis
        call bounded by timeout_s), log what could not be written, and close the connections.
        Calls after close answer locally, as during an outage."""
        if self._closed.is_set():
            return
        self._closed.set()
        thread = self._recovery
        if thread is not None:
            thread.join(timeout=10 * self._retry_interval_s)
        with self._lock:
            self._healthy = False
        try:
            if self._pending or self._in_doubt:
                self._reconnect()
                self._drain(final=True)
        except Exception as e:  # noqa: BLE001
            with self._lock:
                self._n["errors"] += 1
            left = self.stats.pending
            log.warning("Redis ledger %s: closing with %d record() call(s) not written (%s: %s)",
                        self._where, left, type(e).__name__, e)
        try:
            self._client.close()
        except Exception:  # noqa: BLE001
            pass

    # -- internals --------------------------------------------------------------------------
    def _hash_key(self, namespace: str) -> str:
        return f"{self._prefix}ns:{namespace}"

    def _writer(self) -> _Writer:
        w = getattr(self._local, "writer", None)
        if w is None:
            w = _Writer(f"{self._prefix}writer:{self._instance}:{next(self._writer_ids)}")
            self._local.writer = w
        return w

    def _mirror_of(self, namespace: str) -> _Mirror:
        mirror = self._mirror.get(namespace)
        if mirror is None:
            mirror = self._mirror[namespace] = _Mirror()
        return mirror

    @staticmethod
    def _parse(raw: Mapping[str, str]) -> tuple[int, _Acc, str | None]:
        """(hash version, totals, epoch) from an HGETALL reply."""
        out: _Acc = {}
        for name, value in raw.items():
            kind, _, group = name.partition(":")
            if kind in ("exp", "merit"):
                try:
                    v = float(value)
                except ValueError:  # not a number at all: ignored like a non-finite total
                    v = math.nan
                out.setdefault(group, [0.0, 0.0])[0 if kind == "exp" else 1] = v
        return int(raw.get("_v", 0)), out, raw.get("_epoch")

    def _view(self, namespace: str) -> Totals:
        """Mirror + unconfirmed + queued deltas for one namespace (call with the lock held)."""
        acc: _Acc = {}
        mirror = self._mirror.get(namespace)
        if mirror is not None:
            mirror.view_into(acc)
        for batch in self._in_doubt:
            _add(acc, batch.deltas.get(namespace))
        _add(acc, self._pending.get(namespace))
        return _frozen(acc)

    def _send(self, batch: _Batch) -> dict[str, int] | None:
        """One script call: namespace -> new hash version if applied now, None if Redis had
        applied this (writer, seq) before. Raises whatever the client raises."""
        keys = [batch.writer, *(self._hash_key(namespace) for namespace in batch.deltas)]
        rows = [[[g, e, m] for g, (e, m) in groups.items()] for groups in batch.deltas.values()]
        payload = json.dumps(rows, separators=(",", ":"), allow_nan=False)
        # EVALSHA only: the script is loaded at start and on recovery, so a request makes one
        # round trip; a NOSCRIPT error (script cache flushed) is handled like any outage.
        reply = self._client.evalsha(self._script.sha, len(keys), *keys, batch.seq, self._ttl, payload,
                                     f"{batch.writer}:{batch.seq}")
        if not reply:
            return None
        return {namespace: int(v) for namespace, v in zip(batch.deltas, reply[1:])}

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._n["errors"] += 1
            if not self._healthy or self._closed.is_set():
                return
            self._healthy = False
            self._n["outages"] += 1
            self._outage_since = time.monotonic()
            outage = self._n["outages"]
            if self._recovery is None:
                self._recovery = threading.Thread(target=self._recover, daemon=True,
                                                  name=f"ledger-recovery-{self._instance}")
                self._recovery.start()
        log.warning("Redis ledger %s unreachable (%s: %s); outage #%d: answering from the local "
                    "mirror and queuing updates, retrying every %.3g s", self._where,
                    type(exc).__name__, exc, outage, self._retry_interval_s)

    def _recover(self) -> None:
        """Background thread of one outage: probe, flush, re-read the mirror, then resume."""
        while not self._closed.wait(self._retry_interval_s):
            try:
                self._reconnect()
                flushed = self._drain(final=False)
            except Exception as e:  # noqa: BLE001 - still down: try again later
                with self._lock:
                    self._n["errors"] += 1
                log.debug("Redis ledger %s: still unreachable (%s: %s)", self._where,
                          type(e).__name__, e)
                continue
            self._refresh_mirror()
            with self._lock:
                if not self._healthy:  # failed again meanwhile: this thread keeps recovering
                    continue
                self._recovery = None
                took = time.monotonic() - self._outage_since
            log.info("Redis ledger %s reachable again after %.2f s; wrote %d queued record() "
                     "call(s)", self._where, took, flushed)
            return
        with self._lock:  # closed
            self._recovery = None

    def _reconnect(self) -> None:
        """Drop pooled connections (they may lead to a dead server), PING, reload the script."""
        self._client.connection_pool.disconnect()
        self._client.ping()
        self._client.script_load(_LUA)

    def _drain(self, final: bool) -> int:
        """Write every unconfirmed and queued delta; on success (and not final) mark the ledger
        healthy under the same lock that record() takes, so no delta slips between. Raises on
        the first failed write; what was not written stays held and is retried later."""
        flushed = 0
        while True:
            with self._lock:
                if self._pending:
                    writer = self._writer()
                    writer.seq += 1
                    self._in_doubt.append(_Batch(writer.key, writer.seq, self._pending,
                                                 self._pending_count))
                    self._pending, self._pending_count = {}, 0
                if not self._in_doubt:
                    if not final:
                        self._healthy = True
                    return flushed
                batches = sorted(self._in_doubt, key=lambda b: (b.writer, b.seq))
            for batch in batches:
                versions = self._send(batch)
                with self._lock:
                    self._in_doubt.remove(batch)
                    self._n["flushed"] += batch.count
                    if versions:
                        for namespace, groups in batch.deltas.items():
                            self._mirror_of(namespace).add_write(versions[namespace], groups)
                    else:  # applied before (its first try timed out): in the next read
                        self._n["duplicates"] += 1
                flushed += batch.count

    def _refresh_mirror(self) -> None:
        """Re-read every namespace this process has seen (after an outage)."""
        with self._lock:
            namespaces = list(self._mirror)
        for namespace in namespaces:
            with self._lock:
                ticket = next(self._tickets)
            try:
                version, totals, epoch = self._parse(self._client.hgetall(self._hash_key(namespace)))
            except Exception as e:  # noqa: BLE001 - a failed refresh is the next outage
                self._fail(e)
                return
            with self._lock:
                self._store_read(namespace, ticket, version, totals, epoch)

    def _store_read(self, namespace: str, ticket: int, version: int, totals: _Acc,
                    epoch: str | None) -> bool:
        """Sanitise and store one read (call with the lock held); log and count lost data
        (True when this read showed it)."""
        totals, bad = _sane(totals)
        if bad:
            self._n["ignored"] += bad
            _warn_ignored(self._warned, namespace, bad)
        mirror = self._mirror_of(namespace)
        before = mirror.version
        if mirror.store_read(ticket, version, totals, epoch):
            self._n["data_lost"] += 1
            log.warning("Redis ledger %s: namespace %r was lost by Redis (restarted without "
                        "persistence, or flushed; it had %d writes, now %d): the cumulative exposure "
                        "of this amortized rule starts again from what Redis holds",
                        self._where, namespace, before, version)
            return True
        return False


def ledger_from_url(url: str | None, **options) -> Ledger:
    """None, "" or "memory://" -> InProcessLedger; "redis://", "rediss://" or "unix://" URLs
    (host, port, db, password as redis-py reads them) -> RedisLedger(url, **options)."""
    if url is None or url in ("", "memory://"):
        if options:
            raise ValueError(f"ledger options {sorted(options)} apply only to a Redis ledger")
        return InProcessLedger()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return RedisLedger(url, **options)
    raise ValueError(f"ledger url: expected 'memory://' or a redis://, rediss:// or unix:// URL, "
                     f"got {_redacted(url) if scheme else url!r}")
