"""Several revisions of one policy side by side, keyed by name and content digest.

The `PolicyStore` serves one live revision per name. Experiment variants, previews and replays
need others too: the revision a logged decision was made with, a proposed edit that is not live.
`PolicyVersions` keeps every revision the process has seen (the store's live ones at every
reload, and whatever is added), at most `per_name` of each name, the least recently used
dropped first. A live revision is always found, whatever was dropped.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from engine.errors import PolicyNotFound
from engine.policy_loader import LoadedPolicy, PolicyStore, load_policy_bytes


class PolicyVersions:
    """Policy revisions by (name, digest), beside a store's live ones. Thread-safe."""

    def __init__(self, store: PolicyStore, *, per_name: int = 16) -> None:
        if per_name < 1:
            raise ValueError(f"per_name: must be an integer >= 1, got {per_name!r}")
        self.store, self.per_name = store, per_name
        self._kept: dict[str, OrderedDict[str, LoadedPolicy]] = {}
        self._lock = threading.Lock()
        self.keep_live()

    def keep_live(self) -> None:
        """Remember the store's live revisions (call before and after a reload)."""
        for loaded in self.store.list():
            self.add(loaded)

    def add(self, loaded: LoadedPolicy) -> LoadedPolicy:
        """Keep one revision (not made live); returns it."""
        with self._lock:
            by_digest = self._kept.setdefault(loaded.name, OrderedDict())
            by_digest[loaded.digest] = loaded
            by_digest.move_to_end(loaded.digest)
            while len(by_digest) > self.per_name:
                by_digest.popitem(last=False)
        return loaded

    def add_bytes(self, raw: bytes, source: str = "<text>") -> LoadedPolicy:
        """Validate a policy document (PolicyInvalid names the path and line) and keep it."""
        return self.add(load_policy_bytes(raw, source))

    def get(self, name: str, digest: str) -> LoadedPolicy:
        """The revision of `name` whose bytes have sha256 `digest`. Raises PolicyNotFound."""
        live = self.store.get(name) if name in self.store else None
        if live is not None and live.digest == digest:
            return live
        with self._lock:
            by_digest = self._kept.get(name, {})
            found = by_digest.get(digest)
            if found is not None:
                by_digest.move_to_end(digest)
                return found
            known = [f"{name}@{d[:12]}" for d in by_digest]
        raise PolicyNotFound(f"{name}@{digest}", known)

    def digests(self, name: str) -> list[str]:
        """The kept revisions of `name`, least recently used first."""
        with self._lock:
            return list(self._kept.get(name, {}))
