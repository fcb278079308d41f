"""A RerankRequest from JSON, for `reranker call` and the examples.

Two spellings are accepted, and may be mixed:
- the compact one, columns as plain lists:
    {"policy": "home_feed", "slate_size": 10, "explain": true, "solver": "greedy",
     "candidates": {"item_ids": ["a", "b"],
                    "scores": {"p_click": [0.1, 0.2]},
                    "attributes": {"category": ["shoes", "bags"],
                                   "seller": {"dictionary": ["s1"], "codes": [0, 0]}},
                    "numeric": {"price": [10.0, 25.5]},
                    "embeddings": [[0.1, 0.2], [0.3, 0.4]]}}
- the canonical proto3 JSON mapping of reranker.v1.RerankRequest ({"values": [...]} objects,
  "SOLVER_MODE_GREEDY", "slateSize", {"dim": 2, "values": [...]}, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from server._gen.reranker.v1 import reranker_pb2 as pb

_COLUMN_MAPS = ("scores", "attributes", "numeric")


def request_from_json(obj: dict[str, Any]) -> pb.RerankRequest:
    """Build a request from a decoded JSON object. Raises ValueError naming the bad field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object at the top level, got {type(obj).__name__}")
    obj = dict(obj)
    solver = obj.get("solver")
    if isinstance(solver, str) and not solver.upper().startswith("SOLVER_MODE_"):
        obj["solver"] = f"SOLVER_MODE_{solver.upper()}"
    candidates = obj.get("candidates")
    if isinstance(candidates, dict):
        candidates = dict(candidates)
        for key in _COLUMN_MAPS:
            columns = candidates.get(key)
            if isinstance(columns, dict):
                candidates[key] = {
                    name: {"values": col} if isinstance(col, list) else col
                    for name, col in columns.items()
                }
        emb = candidates.get("embeddings")
        if isinstance(emb, list):  # list of rows
            dim = len(emb[0]) if emb and isinstance(emb[0], list) else 0
            candidates["embeddings"] = {
                "dim": dim,
                "values": [x for row in emb for x in (row if isinstance(row, list) else [row])],
            }
        obj["candidates"] = candidates
    try:
        return json_format.ParseDict(obj, pb.RerankRequest())
    except json_format.ParseError as exc:
        raise ValueError(str(exc)) from None


def load_request(path: str | Path) -> pb.RerankRequest:
    """Read a JSON request file. Raises OSError / ValueError with the file name in the message."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    try:
        return request_from_json(obj)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
