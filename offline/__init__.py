"""Offline evaluation: replay logged traffic under any policy and estimate its online metrics.

Sits beside `engine`: imports `engine` and `solvers`, never `server` (tests/test_imports.py).
Logged records become engine types without protobuf.

* offline.estimators - slate off-policy estimators (numpy), with bootstrap CIs and the ESS
* offline.obd        - the Open Bandit Dataset sample: fetch, verify, read into log records
* offline.replay     - re-run logged requests under policies through engine.decide
"""
