"""Write examples/request_home_feed.json: ~50 scored candidates for the home_feed policy.

Deterministic (fixed seed, stdlib `random` only), so the files can be regenerated and diffed:

    python examples/make_request.py [--n 50] [--seed 7] [--output examples/request_home_feed.json]

Two files, the same request: `request_home_feed.json` in the CLI's shorthand (columns as plain
lists), for `reranker call examples/request_home_feed.json`, and `request_home_feed.proto3.json`
in the proto3 JSON mapping that grpcurl and protobuf libraries read:

    grpcurl -plaintext -d @ 127.0.0.1:50051 reranker.v1.Reranker/Rerank < examples/request_home_feed.proto3.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

CATEGORIES = {  # category -> (brands, price range)
    "shoes": (["Stride", "Nimbus", "Pace"], (39.0, 180.0)),
    "apparel": (["Loom", "Northfold", "Pace"], (12.0, 140.0)),
    "electronics": (["Voltra", "Kest", "Lumen"], (19.0, 900.0)),
    "home": (["Hearth", "Oaklane"], (8.0, 350.0)),
    "beauty": (["Glow", "Verda"], (6.0, 85.0)),
    "toys": (["Brickly", "Kest"], (9.0, 120.0)),
    "sports": (["Pace", "Summit"], (15.0, 400.0)),
}
# seller -> tier: "new" sellers joined recently (policies give them exposure minimums).
SELLERS = {
    "acme-outlet": "top", "bluebird-goods": "top", "citymart": "established",
    "dunes-direct": "established", "evergreen-co": "established", "fernhill": "established",
    "granite-supply": "established", "harbor-lane": "new", "ivy-and-oak": "new",
    "juniper-makers": "new", "kite-studio": "new",
}
CONTENT_TYPES = ["product", "product", "product", "product", "video", "bundle"]
AVAILABILITY = ["in_stock"] * 8 + ["low_stock", "out_of_stock"]


def make_request(n: int = 50, seed: int = 7) -> dict:
    rng = random.Random(seed)
    item_ids, category, seller, content_type, availability = [], [], [], [], []
    brand, seller_tier, sponsored, price = [], [], [], []
    p_click, p_add_to_cart, p_purchase = [], [], []
    for i in range(n):
        cat = rng.choice(list(CATEGORIES))
        brands, (lo, hi) = CATEGORIES[cat]
        sel = rng.choice(list(SELLERS))
        item_ids.append(f"sku-{100_000 + rng.randrange(900_000):06d}-{i:02d}")
        category.append(cat)
        seller.append(sel)
        seller_tier.append(SELLERS[sel])
        brand.append(rng.choice(brands))
        content_type.append(rng.choice(CONTENT_TYPES))
        availability.append(rng.choice(AVAILABILITY))
        sponsored.append("true" if rng.random() < 0.15 else "false")
        price.append(round(lo + (hi - lo) * rng.random() ** 2, 2))
        # Funnel-shaped scores: click > add-to-cart > purchase, correlated.
        click = rng.betavariate(2.0, 14.0)
        atc = click * rng.betavariate(2.0, 5.0)
        purchase = atc * rng.betavariate(3.0, 4.0)
        p_click.append(round(click, 5))
        p_add_to_cart.append(round(atc, 5))
        p_purchase.append(round(purchase, 5))
    return {
        "policy": "home_feed",
        "request_id": f"example-home-feed-{seed}",
        "user_id": "user-0042",
        "slate_size": 10,
        "explain": True,
        "candidates": {
            "item_ids": item_ids,
            "scores": {"p_click": p_click, "p_add_to_cart": p_add_to_cart, "p_purchase": p_purchase},
            "attributes": {
                "category": category,
                "seller": seller,
                "content_type": content_type,
                "availability": availability,
                "brand": brand,
                "seller_tier": seller_tier,
                "sponsored": sponsored,
            },
            "numeric": {"price": price},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", default=str(Path(__file__).with_name("request_home_feed.json")),
                        help="the shorthand file; the proto3 JSON one is written beside it (.proto3.json)")
    args = parser.parse_args()
    request = make_request(args.n, args.seed)
    output = Path(args.output)
    output.write_text(to_json(request), encoding="utf-8")
    output.with_name(output.name.removesuffix(".json") + ".proto3.json").write_text(
        to_json(to_proto3(request)), encoding="utf-8")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def to_proto3(request: dict) -> dict:
    """The shorthand request in the proto3 JSON mapping: lowerCamelCase field names, each column
    an object ({"values": [...]}); map keys (column names) stay as they are."""
    out = {_camel(k): v for k, v in request.items() if k != "candidates"}
    c = request["candidates"]
    out["candidates"] = {"itemIds": c["item_ids"]} | {
        kind: {name: {"values": values} for name, values in c[kind].items()}
        for kind in ("scores", "attributes", "numeric") if kind in c
    }
    return out


def to_json(obj: dict) -> str:
    """Indented JSON with each column on one line (readable and diffable)."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


if __name__ == "__main__":
    main()
