"""An in-process Engine over policies given as dicts, and random candidates for it: what the
engine tests and the engine benchmarks both build on."""

from __future__ import annotations

import numpy as np

from engine.engine import Engine
from engine.policy import Policy
from engine.policy_loader import LoadedPolicy, PolicyStore
from engine.types import Attribute, Candidates
from engine.validate import Limits

ATTRS = {
    "category": [f"cat{i}" for i in range(8)],
    "seller": [f"seller{i}" for i in range(15)],
    "seller_tier": ["new", "established", "top"],
    "brand": [f"brand{i}" for i in range(6)],
    "content_type": ["product", "video", "bundle"],
    "availability": ["in_stock", "low_stock", "out_of_stock", "discontinued"],
    "sponsored": ["yes", "no"],
}
SCORES = ["p_click", "p_add_to_cart", "p_purchase", "relevance", "predicted_value"]


def candidates(n: int, seed: int = 0, *, rare: float = 0.1) -> Candidates:
    rng = np.random.default_rng(seed)
    attrs = {}
    for name, values in ATTRS.items():
        p = np.ones(len(values))
        p[0] = rare * len(values) if name in ("seller_tier", "content_type", "sponsored") else 1.0
        attrs[name] = Attribute.from_values(rng.choice(values, size=n, p=p / p.sum()).tolist())
    return Candidates(
        item_ids=[f"item-{seed}-{i}" for i in range(n)],
        scores={s: rng.random(n) for s in SCORES},
        attributes=attrs,
        numeric={"price": rng.uniform(1, 500, n)},
        embeddings=rng.normal(size=(n, 16)).astype(np.float32),
    )


def engine_with(*policies: dict, limits: Limits | None = None) -> Engine:
    store = PolicyStore()
    for doc in policies:
        store.add(LoadedPolicy(Policy.model_validate(doc), "<test>", str(hash(str(doc))), 0.0))
    eng = Engine(store, limits=limits)
    return eng


BASE = {"name": "p", "version": "1", "slate_size": 10, "objective": {"weights": {"p_click": 1.0}}}


def policy(**kw) -> dict:
    return {**BASE, **kw}
