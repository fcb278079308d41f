"""Fixtures that tests and benchmarks share: canned and random solver instances, an in-process
engine with random candidates, a throw-away Redis server, the reference exposure LP.

Not part of the installed product; tests and benchmarks import it from the repository root."""
