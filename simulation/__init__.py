"""Long-term simulation: users who come back (or not), sellers who stay (or leave), under a
re-ranking policy, with the engine in the loop; two policies compared on common random numbers.

Parts (RecSim's shape, each testable alone): `scenario` (the validated YAML), `rng` (keyed random
streams), `users` (user model), `catalog` (sellers and items), `ranker` (the upstream ranker),
`environment` (the loop, one market under one policy), `run` (seeds, shards, policies; local
processes or Ray), `report` (tables, plots, HTML), `cli` (`reranker simulate`).
"""
