"""The Open Bandit Dataset sample (ZOZOTOWN; Saito et al. 2021; CC BY 4.0): fetch and verify it,
read it into typed, validated numpy arrays, reproduce its Bernoulli TS logging policy, and
convert it into the engine's decision-log format.

    offline.obd.fetch("data/obd")                     # `make data`: pip download + sha256 + extract
    data = offline.obd.load("all", "random")           # ObdData: 10,000 rows, 80 items, 3 positions
    dist = offline.obd.bts_action_dist(*offline.obd.bts_prior("all"), n_sim=1_000_000, seed=0)
    offline.obd.to_decision_log(data, "logs/obd_random_all")  # read back with read_log / read_outcomes

**Where the data comes from.** The 10,000-row sample of each (behavior policy, campaign) ships
inside the obp 0.5.7 source distribution on PyPI (`OBP_SDIST_SHA256`), which `fetch` downloads
with pip (`pip download --no-deps --no-binary :all: --ignore-requires-python obp==0.5.7`; pip
builds the sdist's metadata, which needs PyPI for the poetry-core build backend and nothing else),
checks, and unpacks: `<root>/{random,bts}/{all,men,women}/{<campaign>.csv,item_context.csv}` and
`<root>/prior_bts.yaml` (the production Beta priors of the Bernoulli TS policy), with
`<root>/MANIFEST.json` holding the archive's and every file's sha256. obp itself is never
installed or imported.

**One row = one item at one position.** A row holds the item shown, its position (1..3), the
click, the logging policy's probability of that item at that position (`propensity_score`), four
hashed user features and the user-item affinity for every item. The three rows of one impression
share the user features and are logged within about a millisecond of each other, so
`group_impressions` can find them; but the sample keeps about 1 row in 140 of the full log at
random (10,000 of the 1.37M rows of random/all, a median 35 s apart), so almost no impression
survives whole: random/all has 59 pairs and no triple (`impression_stats`). Slates of 3 cannot be
rebuilt; each row is a slate of one item, with its position kept as context (as obp does).

**Propensities.** Under the uniform random policy (3 distinct items drawn uniformly from n)
P(item at position) = 1/n exactly, and, for a slate of one, joint = cascade = marginal. The BTS
rows' propensities are ZOZOTOWN's, computed from the policy's parameters at the time (they vary
within one (item, position): the policy was updated during the week); the dataset does not say
how many samples they took, so `marginal_samples` is left 0 for them too (see to_decision_log).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import yaml

OBP_VERSION = "0.5.7"
OBP_SDIST = f"obp-{OBP_VERSION}.tar.gz"
OBP_SDIST_SHA256 = "3060d67fedfcfadf1e7a6f2608987f74412b5eb74d2c567edeb147595c68f2a0"
DEFAULT_ROOT = Path("data/obd")
CAMPAIGNS = ("all", "men", "women")
BEHAVIORS = ("random", "bts")
N_ITEMS = {"all": 80, "men": 34, "women": 46}
N_POSITIONS = 3
_MEMBER_PREFIX = f"obp-{OBP_VERSION}/obp/dataset/obd/"
_PRIOR_MEMBER = f"obp-{OBP_VERSION}/obp/policy/conf/prior_bts.yaml"
MANIFEST = "MANIFEST.json"
PRIOR_FILE = "prior_bts.yaml"
EXPECTED_FILES = tuple(
    f"{b}/{c}/{name}" for b in BEHAVIORS for c in CAMPAIGNS for name in (f"{c}.csv", "item_context.csv")
) + (PRIOR_FILE,)


# ------------------------------------------------------------------ errors
class ObdError(Exception):
    """Base of the errors this module raises."""


class FetchError(ObdError):
    """The archive could not be downloaded or unpacked."""


class ChecksumError(ObdError):
    """The archive or an unpacked file does not have the expected sha256."""


class DataMissing(ObdError, FileNotFoundError):
    """The data is not where it was looked for (run `make data`)."""


class FormatError(ObdError, ValueError):
    """A file of the data set is malformed: names the file, the row and the column."""

    def __init__(self, file, row: int | None, column: str | None, message: str):
        self.file, self.row, self.column = str(file), row, column
        where = [self.file]
        if row is not None:
            where.append(f"row {row} (line {row + 1})")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}")


# ------------------------------------------------------------------ fetch and verify
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(root: str | os.PathLike = DEFAULT_ROOT) -> dict:
    """Check an unpacked copy against its MANIFEST.json: every expected file present with the
    sha256 recorded when it was unpacked from the verified archive. Returns the manifest.

    Raises DataMissing (no manifest or a file missing) or ChecksumError (a file changed, or the
    manifest names another archive)."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise DataMissing(f"{manifest_path}: not found; the OBD sample is not in {root} "
                          f"(run `make data`, or python -m offline.obd fetch --dest {root})")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        archive_sha = manifest["archive_sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ChecksumError(f"{manifest_path}: unreadable manifest ({exc}); delete {root} and "
                            "run `make data` again") from None
    if archive_sha != OBP_SDIST_SHA256:
        raise ChecksumError(f"{manifest_path}: unpacked from an archive with sha256 {archive_sha}, "
                            f"expected {OBP_SDIST_SHA256} ({OBP_SDIST}); delete {root} and run "
                            "`make data` again")
    for rel in EXPECTED_FILES:
        path = root / rel
        if rel not in files:
            raise ChecksumError(f"{manifest_path}: does not list {rel}; delete {root} and run "
                                "`make data` again")
        if not path.is_file():
            raise DataMissing(f"{path}: missing (run `make data`)")
        got = sha256_file(path)
        if got != files[rel]:
            raise ChecksumError(f"{path}: sha256 {got}, expected {files[rel]} (the file changed "
                                f"after it was unpacked); delete {root} and run `make data` again")
    return manifest


def _download(workdir: Path, python: str) -> Path:
    cmd = [python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "--ignore-requires-python", f"obp=={OBP_VERSION}", "--dest", str(workdir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"pip download of obp=={OBP_VERSION} failed: {exc}") from None
    archive = workdir / OBP_SDIST
    if proc.returncode != 0 or not archive.is_file():
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-8:])
        raise FetchError(f"pip download of obp=={OBP_VERSION} (the sdist that holds the OBD sample) "
                         f"failed with exit code {proc.returncode}: is PyPI reachable?\n"
                         f"  command: {' '.join(cmd)}\n  {tail}")
    return archive


def _extract(archive: Path, into: Path) -> dict[str, str]:
    """Unpack the OBD files and the BTS prior from the sdist into `into`; return their sha256."""
    files: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar:
                if m.name.startswith(_MEMBER_PREFIX) and m.name.endswith((".csv",)):
                    rel = m.name[len(_MEMBER_PREFIX):]
                elif m.name == _PRIOR_MEMBER:
                    rel = PRIOR_FILE
                else:
                    continue
                parts = Path(rel).parts
                if not m.isfile() or Path(rel).is_absolute() or ".." in parts:
                    raise FetchError(f"{archive}: unexpected member {m.name!r} (not a plain file)")
                target = into / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                with open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                files[rel] = sha256_file(target)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FetchError(f"{archive}: cannot unpack ({exc})") from None
    missing = [rel for rel in EXPECTED_FILES if rel not in files]
    if missing:
        raise FetchError(f"{archive}: does not hold {', '.join(missing)}")
    return files


def fetch(dest: str | os.PathLike = DEFAULT_ROOT, *, archive: str | os.PathLike | None = None,
          python: str = sys.executable, log=None) -> Path:
    """Make sure `dest` holds the verified OBD sample; download it first if it does not.

    Idempotent: when `dest` already verifies (see `verify`), nothing is downloaded or written.
    Otherwise the obp sdist is taken from `archive` (a local copy) or downloaded with pip, its
    sha256 checked against OBP_SDIST_SHA256 (ChecksumError on a mismatch: nothing is written),
    and the files unpacked into a temporary folder beside `dest` that then replaces it.
    `log`: a callable given one line per step (default: silent)."""
    dest = Path(dest)
    say = log or (lambda _msg: None)
    try:
        verify(dest)
        return dest
    except DataMissing:
        pass
    except ChecksumError as exc:
        say(f"re-fetching: {exc}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".obd-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        if archive is None:
            say(f"downloading obp=={OBP_VERSION} (sdist, ~1.3 MB) with pip")
            src = _download(tmp, python)
        else:
            src = Path(archive)
            if not src.is_file():
                raise FetchError(f"{src}: no such archive")
        got = sha256_file(src)
        if got != OBP_SDIST_SHA256:
            raise ChecksumError(f"{src}: sha256 {got}, expected {OBP_SDIST_SHA256} ({OBP_SDIST}); "
                                "the download is corrupt or not the expected release")
        staging = tmp / "obd"
        files = _extract(src, staging)
        manifest = {"source": f"PyPI obp=={OBP_VERSION} sdist ({OBP_SDIST})",
                    "archive_sha256": got, "license": "CC BY 4.0 (Open Bandit Dataset, ZOZO, Inc.)",
                    "fetched": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "files": dict(sorted(files.items()))}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    verify(dest)
    say(f"OBD sample verified in {dest}")
    return dest


# ------------------------------------------------------------------ reading
@dataclass(frozen=True)
class ObdData:
    """One (behavior policy, campaign) file of the sample as typed arrays, in file (time) order.

    Rows: item, position (1..3), click, propensity; users: integer-coded hashed features (one
    dictionary per feature) and the user-item affinity of every item; items: ids "0".."n-1",
    item_feature_0 (a number) and item_feature_1..3 (integer-coded hashed categories)."""

    campaign: str
    behavior: str
    path: str
    index: np.ndarray  # int64[n]: the file's own row index column
    timestamp: np.ndarray  # datetime64[us][n], UTC
    item: np.ndarray  # int64[n]: 0-based item index (= item_id)
    position: np.ndarray  # int64[n]: 1..3
    click: np.ndarray  # int64[n]: 0 / 1
    propensity: np.ndarray  # float64[n]: P_logging(item at position | x), in (0, 1]
    user_feature_names: tuple[str, ...]
    user_codes: np.ndarray  # int64[n, n_user_features]
    user_dictionaries: tuple[tuple[str, ...], ...]
    affinity: np.ndarray  # float64[n, n_items]: user-item affinity of every item
    item_ids: tuple[str, ...]
    item_numeric: dict[str, np.ndarray] = field(default_factory=dict)  # float64[n_items]
    item_codes: dict[str, np.ndarray] = field(default_factory=dict)  # int64[n_items]
    item_dictionaries: dict[str, tuple[str, ...]] = field(default_factory=dict)
    impression: np.ndarray | None = None  # int64[n]: group_impressions' ids

    @property
    def n(self) -> int:
        return int(self.item.size)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def ctr(self) -> float:
        return float(self.click.mean())

    def take(self, rows) -> "ObdData":
        """The rows `rows` (indices or a boolean mask), same items."""
        rows = np.asarray(rows)
        per_row = ("index", "timestamp", "item", "position", "click", "propensity", "user_codes",
                   "affinity")
        changes = {name: getattr(self, name)[rows] for name in per_row}
        changes["impression"] = None if self.impression is None else self.impression[rows]
        return _replace(self, **changes)


def _replace(obj, **changes):
    from dataclasses import replace
    return replace(obj, **changes)


def _header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(path, None, None, f"cannot read ({exc})") from None
    if not header:
        raise FormatError(path, None, None, "empty file: expected a header line")
    seen = set()
    for name in header:
        if name in seen:
            raise FormatError(path, None, name, "duplicate column name in the header")
        seen.add(name)
    return header


def _read_strings(path: Path) -> tuple[dict[str, pa.Array], list[str]]:
    """Every column as an array of Python strings (validation converts them), with rows of the
    wrong width refused by row number."""
    header = _header(path)
    names = [n if n else "_index" for n in header]
    bad: list = []

    def invalid(row) -> str:
        bad.append(row)
        return "skip"

    try:
        table = pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(invalid_row_handler=invalid),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError) as exc:
        raise FormatError(path, None, None, f"not a readable CSV file ({exc})") from None
    if bad:  # the parser's threads do not know row numbers: find the first short / long row
        with open(path, newline="", encoding="utf-8") as f:
            for row, fields in enumerate(csv.reader(f)):
                if row and len(fields) != len(header):
                    break
        raise FormatError(path, row, None, f"expected {len(header)} fields (as the header), got "
                                           f"{len(fields)}: {','.join(fields)[:80]!r}")
    return {name: table.column(name).combine_chunks() for name in names}, header


def _bad_row(values: pa.Array, ok) -> tuple[int, str]:
    for i, v in enumerate(values.to_pylist()):
        if not ok(v):
            return i, v
    return -1, ""


def _is_number(v: str) -> bool:
    try:
        return np.isfinite(float(v)) and v.strip() == v and v != ""
    except ValueError:
        return False


def _numbers(path, name: str, values: pa.Array, what: str = "a finite number") -> np.ndarray:
    try:
        out = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        out = None
    if out is None or not np.isfinite(out).all():
        i, v = _bad_row(values, _is_number)
        if i < 0:  # cannot happen: the cast or the finiteness check failed on some row
            i = int(np.flatnonzero(~np.isfinite(out))[0])
            v = values[i].as_py()
        raise FormatError(path, i + 1, name, f"must be {what}, got {v!r}")
    return out


def _integers(path, name: str, values: pa.Array, lo: int, hi: int, what: str) -> np.ndarray:
    x = _numbers(path, name, values, what)
    bad = (x != np.round(x)) | (x < lo) | (x > hi)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FormatError(path, i + 1, name, f"must be {what}, got {values[i].as_py()!r}")
    return x.astype(np.int64)


def _categories(path, name: str, values: pa.Array) -> tuple[np.ndarray, tuple[str, ...]]:
    strings = values.to_pylist()
    empty = next((i for i, v in enumerate(strings) if v == ""), None)
    if empty is not None:
        raise FormatError(path, empty + 1, name, "must be a non-empty category (a hashed string), got ''")
    dictionary = tuple(sorted(set(strings)))
    index = {v: k for k, v in enumerate(dictionary)}
    return np.fromiter((index[v] for v in strings), np.int64, len(strings)), dictionary


def _require(path, present, names) -> None:
    missing = [n for n in names if n not in present]
    if missing:
        raise FormatError(path, None, missing[0],
                          f"missing column (required: {', '.join(missing[:6])}"
                          f"{', ...' if len(missing) > 6 else ''})")


def read_item_context(path: str | os.PathLike) -> dict:
    """item_context.csv -> item ids, item_feature_0 (numbers) and the other item_feature_*
    columns integer-coded; item_id must be 0..n-1, each once."""
    path = Path(path)
    cols, header = _read_strings(path)
    _require(path, cols, ["item_id", "item_feature_0"])
    n = len(cols["item_id"])
    if n == 0:
        raise FormatError(path, None, None, "no items")
    ids = _integers(path, "item_id", cols["item_id"], 0, n - 1, f"an integer in [0, {n - 1}]")
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(np.diff(ids[order]) == 0)
    if dup.size:
        i = int(order[dup[0] + 1])
        raise FormatError(path, i + 1, "item_id", f"duplicate item id {int(ids[i])}")
    numeric = {"item_feature_0": _numbers(path, "item_feature_0", cols["item_feature_0"])[order]}
    codes, dictionaries = {}, {}
    for name in header:
        if name.startswith("item_feature_") and name != "item_feature_0":
            c, d = _categories(path, name, cols[name])
            codes[name], dictionaries[name] = c[order], d
    return {"item_ids": tuple(str(i) for i in range(n)), "numeric": numeric, "codes": codes,
            "dictionaries": dictionaries}


def load(campaign: str = "all", behavior: str = "random", root: str | os.PathLike = DEFAULT_ROOT,
         *, verify_checksums: bool = False) -> ObdData:
    """Read `<root>/<behavior>/<campaign>/<campaign>.csv` and its item_context.csv, validated.

    Refused with FormatError naming the file, the row (1-based data row; line = row + 1) and the
    column: a missing column; a value of the wrong type (timestamp without a zone offset, a
    non-integer item or position, a click that is not 0/1, a non-finite affinity); an item id
    outside the item context; a position outside 1..3; a propensity outside (0, 1]."""
    if campaign not in CAMPAIGNS:
        raise ValueError(f"campaign: must be one of {', '.join(CAMPAIGNS)}, got {campaign!r}")
    if behavior not in BEHAVIORS:
        raise ValueError(f"behavior: must be one of {', '.join(BEHAVIORS)}, got {behavior!r}")
    root = Path(root)
    if verify_checksums:
        verify(root)
    folder = root / behavior / campaign
    path, item_path = folder / f"{campaign}.csv", folder / "item_context.csv"
    for p in (path, item_path):
        if not p.is_file():
            raise DataMissing(f"{p}: not found; the OBD sample is not in {root} (run `make data`)")
    items = read_item_context(item_path)
    n_items = len(items["item_ids"])
    cols, header = _read_strings(path)
    user_names = [h for h in header if h.startswith("user_feature_")]
    affinity_names = [f"user-item_affinity_{i}" for i in range(n_items)]
    _require(path, cols, ["timestamp", "item_id", "position", "click", "propensity_score"])
    if not user_names:
        raise FormatError(path, None, "user_feature_0", "missing column (no user_feature_* columns)")
    _require(path, cols, affinity_names)
    n = len(cols["timestamp"])
    if n == 0:
        raise FormatError(path, None, None, "no rows")
    try:
        ts = cols["timestamp"].cast(pa.timestamp("us", tz="UTC"))
        timestamp = ts.to_numpy(zero_copy_only=False).astype("datetime64[us]")
    except pa.ArrowInvalid:
        def ok(v):
            try:
                pa.array([v]).cast(pa.timestamp("us", tz="UTC"))
                return True
            except pa.ArrowInvalid:
                return False
        i, v = _bad_row(cols["timestamp"], ok)
        raise FormatError(path, i + 1, "timestamp", f"must be a time with a zone offset "
                                                    f"(2019-11-24 00:00:34.762830+00:00), got {v!r}") from None
    index = (_integers(path, "(row index)", cols["_index"], 0, 2**62, "an integer row index")
             if "_index" in cols else np.arange(n, dtype=np.int64))
    item = _integers(path, "item_id", cols["item_id"], 0, n_items - 1,
                     f"an item id in [0, {n_items - 1}] (item_context.csv)")
    position = _integers(path, "position", cols["position"], 1, N_POSITIONS,
                         f"an integer position in 1..{N_POSITIONS}")
    click = _integers(path, "click", cols["click"], 0, 1, "0 or 1")
    propensity = _numbers(path, "propensity_score", cols["propensity_score"], "a number in (0, 1]")
    bad = (propensity <= 0) | (propensity > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FormatError(path, i + 1, "propensity_score",
                          f"must be a number in (0, 1], got {cols['propensity_score'][i].as_py()!r}")
    user = [_categories(path, name, cols[name]) for name in user_names]
    affinity = np.column_stack([_numbers(path, name, cols[name]) for name in affinity_names])
    data = ObdData(
        campaign=campaign, behavior=behavior, path=str(path), index=index, timestamp=timestamp,
        item=item, position=position, click=click, propensity=propensity,
        user_feature_names=tuple(user_names),
        user_codes=np.column_stack([c for c, _ in user]).astype(np.int64),
        user_dictionaries=tuple(d for _, d in user), affinity=np.ascontiguousarray(affinity),
        item_ids=items["item_ids"], item_numeric=items["numeric"], item_codes=items["codes"],
        item_dictionaries=items["dictionaries"])
    return _replace(data, impression=group_impressions(data))


# ------------------------------------------------------------------ impressions
def group_impressions(data: ObdData, max_gap_s: float = 1.0) -> np.ndarray:
    """int64[n]: an impression id per row. Consecutive rows (file order = time order) join the
    open impression when they have the same user features, a position it does not hold yet, and
    a time stamp within `max_gap_s` of its first row; otherwise they open a new one. (In the
    sample the rows of one impression are logged 0-1 ms apart; unrelated rows a median 35 s.)"""
    n = data.n
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    t = data.timestamp.astype(np.int64)
    gap = int(max_gap_s * 1e6)
    users = [tuple(r) for r in data.user_codes.tolist()]
    pos = data.position.tolist()
    gid, start, held = 0, t[0], {pos[0]}
    out[0] = 0
    for i in range(1, n):
        if users[i] == users[i - 1] and pos[i] not in held and t[i] - start <= gap:
            held.add(pos[i])
        else:
            gid += 1
            start, held = t[i], {pos[i]}
        out[i] = gid
    return out


def impression_stats(data: ObdData) -> dict:
    """How many impressions have 1, 2 and 3 rows (positions) in the sample."""
    ids = data.impression if data.impression is not None else group_impressions(data)
    sizes = np.bincount(np.bincount(ids), minlength=N_POSITIONS + 1)
    return {"rows": data.n, "impressions": int(ids.max() + 1) if ids.size else 0,
            **{f"with_{k}_rows": int(sizes[k]) for k in range(1, N_POSITIONS + 1)}}


# ------------------------------------------------------------------ the Bernoulli TS policy
def bts_prior(campaign: str = "all", root: str | os.PathLike = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """The ZOZOTOWN production Beta(alpha, beta) parameters of one campaign's items, from
    `<root>/prior_bts.yaml` (obp's policy/conf/prior_bts.yaml), validated."""
    path = Path(root) / PRIOR_FILE
    if not path.is_file():
        raise DataMissing(f"{path}: not found (run `make data`)")
    try:
        conf = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FormatError(path, None, None, f"not valid YAML ({exc})") from None
    if not isinstance(conf, dict) or campaign not in conf:
        raise FormatError(path, None, campaign, f"no prior for campaign {campaign!r}")
    out = []
    for key in ("alpha", "beta"):
        try:
            v = np.asarray(conf[campaign][key], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise FormatError(path, None, f"{campaign}.{key}", "must be a list of numbers") from None
        if v.shape != (N_ITEMS[campaign],) or not (np.isfinite(v).all() and (v > 0).all()):
            raise FormatError(path, None, f"{campaign}.{key}",
                              f"must be {N_ITEMS[campaign]} positive numbers, got shape {v.shape}")
        out.append(v)
    return out[0], out[1]


def bts_action_dist(alpha, beta, *, len_list: int = N_POSITIONS, n_sim: int = 1_000_000,
                    seed: int = 0, chunk: int = 20_000) -> np.ndarray:
    """float64[n_items, len_list]: P(item i at position k) under Bernoulli Thompson sampling
    with Beta(alpha, beta) posteriors and no further updates, by Monte Carlo: each of `n_sim`
    draws samples theta_i ~ Beta(alpha_i, beta_i) for every item and shows the `len_list` largest,
    in decreasing order. Seeded (numpy's PCG64); each column sums to 1 and each entry's standard
    error is sqrt(p (1 - p) / n_sim)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.ndim != 1 or alpha.shape != beta.shape or alpha.size == 0:
        raise ValueError(f"alpha, beta: must be two 1-d arrays of the same length, got {alpha.shape}, {beta.shape}")
    if not (np.isfinite(alpha).all() and np.isfinite(beta).all() and (alpha > 0).all() and (beta > 0).all()):
        raise ValueError("alpha, beta: must be finite and > 0")
    n_items = alpha.size
    if not (isinstance(len_list, int) and 1 <= len_list <= n_items):
        raise ValueError(f"len_list: must be an integer in [1, {n_items}], got {len_list!r}")
    if not (isinstance(n_sim, int) and n_sim >= 1):
        raise ValueError(f"n_sim: must be an integer >= 1, got {n_sim!r}")
    rng = np.random.default_rng(seed)
    counts = np.zeros((len_list, n_items), dtype=np.int64)
    done = 0
    while done < n_sim:
        m = min(chunk, n_sim - done)
        theta = rng.beta(alpha, beta, size=(m, n_items))
        top = np.argpartition(-theta, len_list - 1, axis=1)[:, :len_list]
        order = np.argsort(-np.take_along_axis(theta, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        for k in range(len_list):
            counts[k] += np.bincount(top[:, k], minlength=n_items)
        done += m
    return (counts / n_sim).T.copy()


def bts_top1_exact(alpha, beta) -> np.ndarray:
    """float64[n_items]: P(item i shown first) = integral of f_i(x) prod_{j != i} F_j(x) dx, by
    adaptive vector quadrature (scipy.integrate.quad_vec, every item at once) between the pooled
    1e-13 and 1 - 1e-13 quantiles. The exact form the Monte Carlo position-1 column must match."""
    from scipy import integrate, special

    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    lo = float(special.betaincinv(alpha, beta, 1e-13).min())
    hi = float(special.betaincinv(alpha, beta, 1 - 1e-13).max())
    log_norm = special.betaln(alpha, beta)

    def f(x: float) -> np.ndarray:
        log_pdf = (alpha - 1) * np.log(x) + (beta - 1) * np.log1p(-x) - log_norm
        log_cdf = np.log(np.maximum(special.betainc(alpha, beta, x), 1e-300))
        return np.exp(log_pdf + log_cdf.sum() - log_cdf)

    means = alpha / (alpha + beta)
    points = np.unique(np.clip(means, lo, hi))
    return integrate.quad_vec(f, lo, hi, points=points, epsabs=1e-13, epsrel=1e-10, limit=2000)[0]


# ------------------------------------------------------------------ features for the reward model
def context_features(data: ObdData) -> np.ndarray:
    """float64[n, d]: one-hot user features (every category but the first of each feature)."""
    blocks = []
    for j, d in enumerate(data.user_dictionaries):
        onehot = np.zeros((data.n, max(len(d) - 1, 0)))
        codes = data.user_codes[:, j]
        rows = np.flatnonzero(codes > 0)
        onehot[rows, codes[rows] - 1] = 1.0
        blocks.append(onehot)
    return np.hstack(blocks) if blocks else np.zeros((data.n, 0))


def item_features(data: ObdData) -> np.ndarray:
    """float64[n_items, d]: one-hot item identity (all but item 0), item_feature_0 standardised,
    one-hot item_feature_1..3 (all but the first category)."""
    n = data.n_items
    blocks = [np.eye(n)[:, 1:]]
    for name, v in data.item_numeric.items():
        s = v.std()
        blocks.append(((v - v.mean()) / (s if s > 0 else 1.0))[:, None])
    for name, codes in data.item_codes.items():
        k = len(data.item_dictionaries[name])
        blocks.append(np.eye(k)[codes][:, 1:])
    return np.hstack(blocks)


def position_features() -> np.ndarray:
    """float64[3, 2]: one-hot positions 2 and 3 (position 1 is the baseline)."""
    return np.eye(N_POSITIONS)[:, 1:]


def fit_reward_model(data: ObdData, rows=None, *, l2: float = 10.0):
    """The click model (offline.reward_model.ClickModel) fitted on `rows` (default: all) of
    `data`: user features, item features, position and the user-item affinity."""
    from offline.reward_model import fit_click_model

    rows = np.arange(data.n) if rows is None else np.asarray(rows)
    return fit_click_model(context_features(data), item_features(data), position_features(),
                           data.affinity, rows, data.item[rows], data.position[rows] - 1,
                           data.click[rows], l2=l2)


def predict_rewards(model, data: ObdData) -> np.ndarray:
    """float64[n, n_items, 3]: the model's click probability of every item at every position
    for every row's user."""
    return model.predict(context_features(data), item_features(data), position_features(), data.affinity)


# ------------------------------------------------------------------ the decision-log format
def policy_digest(behavior: str, campaign: str) -> str:
    return hashlib.sha256(f"obd:{behavior}:{campaign}:obp-{OBP_VERSION}".encode()).hexdigest()


def request_id(data: ObdData, row: int) -> str:
    return f"obd-{data.behavior}-{data.campaign}-{int(data.index[row]):06d}"


def split_rows(data: ObdData, train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: the first `train_fraction` of the rows in time, and the rest."""
    if not (isinstance(train_fraction, (int, float)) and 0 <= train_fraction < 1):
        raise ValueError(f"train_fraction: must be a number in [0, 1), got {train_fraction!r}")
    cut = int(round(data.n * train_fraction))
    return np.arange(cut), np.arange(cut, data.n)


def to_decision_log(data: ObdData, folder: str | os.PathLike, *, model=None,
                    train_fraction: float = 0.5, rows: str = "test", batch_size: int = 1000,
                    l2: float = 10.0) -> dict:
    """Write `data` as a decision log in `folder` (`folder/decisions`, Parquet through the
    engine's ParquetSink) with its clicks as outcomes (`folder/outcomes`), so that
    `engine.decision_log.read_log(folder)` and `read_outcomes(folder)` read them back and
    `join_outcomes` pairs them.

    One record per row (a slate of one; see the module docstring):
      * candidates: the campaign's items (ids "0".."n-1"); attributes item_feature_1..3 and the
        row's user_feature_* (one value for every candidate); numeric item_feature_0, the row's
        user_item_affinity per item and `position` (the logged position, for every candidate);
        scores `p_click` = the reward model's click probability of each item at the row's
        position for the row's user;
      * the reward model: `model` if given, else fitted (fit_reward_model, L2 `l2`) on the first
        `train_fraction` of the rows in time; `rows="test"` logs only the other rows (scores out
        of sample), `rows="all"` every row;
      * slate: the logged item (slate_size 1); policy `obd_<behavior>`, version obp-0.5.7,
        digest sha256("obd:<behavior>:<campaign>:obp-0.5.7"), ts the row's time stamp,
        request id obd-<behavior>-<campaign>-<file row index>;
      * propensities: marginal = joint = cascade = the logged propensity_score (exact for the
        uniform random policy; ZOZOTOWN's own figure for BTS); marginal_samples 0;
      * outcomes: one OutcomeRecord per row (position 1 of the slate) with its click.
    Returns a summary (rows written, the split, the model's training size and log loss).
    """
    from engine.decision_log.record import DecisionRecord, Diagnostics, OutcomeRecord
    from engine.decision_log.schema import outcomes_to_batch, to_batch
    from engine.decision_log.sinks import OutcomeSink, ParquetSink
    from engine.types import Attribute, Candidates

    if rows not in ("test", "all"):
        raise ValueError(f"rows: must be 'test' or 'all', got {rows!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
    train, test = split_rows(data, train_fraction)
    if model is None:
        if train.size == 0:
            raise ValueError("train_fraction: 0 leaves no rows to fit the reward model on; pass model=")
        model = fit_reward_model(data, train, l2=l2)
    logged = test if rows == "test" else np.arange(data.n)
    q = predict_rewards(model, data.take(logged))  # [m, n_items, 3]
    folder = Path(folder)
    item_ids = list(data.item_ids)
    n_items = data.n_items
    item_attrs = {name: Attribute(codes, data.item_dictionaries[name]) for name, codes in data.item_codes.items()}
    digest = policy_digest(data.behavior, data.campaign)
    name = f"obd_{data.behavior}"
    version = f"obp-{OBP_VERSION}"
    ts = data.timestamp.astype("datetime64[us]").astype(np.int64)
    decisions = ParquetSink(folder / "decisions", max_bytes=1 << 40, max_seconds=1e9)
    outcomes = OutcomeSink(folder / "outcomes", max_bytes=1 << 40, max_seconds=1e9)
    written = 0
    try:
        for start in range(0, logged.size, batch_size):
            recs, outs = [], []
            for j in range(start, min(start + batch_size, logged.size)):
                r = int(logged[j])
                p = int(data.position[r])
                item = int(data.item[r])
                when = datetime.fromtimestamp(ts[r] / 1e6, tz=timezone.utc)
                attrs = dict(item_attrs)
                for u, uname in enumerate(data.user_feature_names):
                    attrs[uname] = Attribute(np.zeros(n_items, np.int64),
                                             (data.user_dictionaries[u][data.user_codes[r, u]],))
                cands = Candidates(
                    item_ids=item_ids, scores={"p_click": q[j, :, p - 1].copy()}, attributes=attrs,
                    numeric={**data.item_numeric, "user_item_affinity": data.affinity[r].copy(),
                             "position": np.full(n_items, float(p))})
                rid = request_id(data, r)
                pr = float(data.propensity[r])
                recs.append(DecisionRecord(
                    ts=when, request_id=rid, unit_id=rid, policy=name, policy_digest=digest,
                    policy_version=version, experiment=None, variant=None, bucket=-1, holdout=False,
                    seed=None, request_policy=name, candidates=cands, slate_size=1, budget_ms=0.0,
                    solver=None, objective_weights={"p_click": 1.0}, explain=False, targets={},
                    user_id="", deadline_ms=None, boosts=None,
                    slate_index=np.array([item], np.int32), slate_item_ids=(item_ids[item],),
                    diagnostics=Diagnostics(solver="logged", status="feasible",
                                            objective=float(q[j, item, p - 1]), bound=None, gap=None,
                                            exact_status="", budget_ms=0.0, eligible=n_items),
                    joint=pr, cascade=np.array([pr]), marginal=np.array([pr]), marginal_samples=0))
                outs.append(OutcomeRecord(rid, 1, item_ids[item], clicks=int(data.click[r]), ts=when))
            decisions.write(to_batch(recs, writer=f"offline.obd {data.path}"))
            outcomes.write(outcomes_to_batch(outs))
            written += len(recs)
    finally:
        decisions.close()
        outcomes.close()
    from offline.reward_model import log_loss

    fit_rows = train if train.size else logged
    return {"records": written, "folder": str(folder), "rows": rows,
            "train_rows": int(train.size), "test_rows": int(test.size),
            "split": f"time order: first {train.size} rows fit the reward model, the next {test.size} are held out",
            "model_log_loss_train": model.logistic.log_loss,
            "model_log_loss_logged": log_loss(q[np.arange(logged.size), data.item[logged],
                                                data.position[logged] - 1], data.click[logged]),
            "model_train_ctr": float(data.click[fit_rows].mean())}


# ------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m offline.obd", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download (pip), verify (sha256) and unpack the OBD sample")
    f.add_argument("--dest", default=str(DEFAULT_ROOT))
    f.add_argument("--archive", help=f"a local copy of {OBP_SDIST} instead of downloading")
    f.add_argument("--quiet", action="store_true", help="print nothing when the data is already there")
    v = sub.add_parser("verify", help="check an unpacked copy against its manifest")
    v.add_argument("--root", default=str(DEFAULT_ROOT))
    c = sub.add_parser("convert", help="write one file of the sample as a decision log")
    c.add_argument("--campaign", default="all", choices=CAMPAIGNS)
    c.add_argument("--behavior", default="random", choices=BEHAVIORS)
    c.add_argument("--root", default=str(DEFAULT_ROOT))
    c.add_argument("--train-fraction", type=float, default=0.5)
    c.add_argument("--rows", default="test", choices=("test", "all"))
    c.add_argument("folder")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "fetch":
            fetch(args.dest, archive=args.archive, log=lambda m: print(m, file=sys.stderr))
            if not args.quiet:
                print(f"OBD sample (obp {OBP_VERSION} sdist, sha256 {OBP_SDIST_SHA256[:12]}...) verified in {args.dest}")
        elif args.cmd == "verify":
            m = verify(args.root)
            print(f"{args.root}: {len(m['files'])} files verified (archive sha256 {m['archive_sha256']})")
        else:
            data = load(args.campaign, args.behavior, args.root)
            print(json.dumps(to_decision_log(data, args.folder, train_fraction=args.train_fraction,
                                             rows=args.rows), indent=1))
    except ObdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
