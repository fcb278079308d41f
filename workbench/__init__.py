"""The policy workbench: a web page where business users edit a policy with validation as they
type, preview the change against a logged traffic sample, sweep a Pareto frontier, and promote a
version into the policies folder that running servers hot-reload.

    reranker workbench --policies policies --log logs/decisions [--experiments DIR]
                       [--host 127.0.0.1] [--port 8750] [--read-only] [--token T]

Layout: `folder` (the policy and experiment files: listing, validation, diffs, the race-safe
atomic promote), `jobs` (previews and sweeps in a background thread, with progress the page
polls), `app` (the FastAPI application: JSON API + one Jinja2 page + static files, plotly's
bundled JS served locally), `cli` (the `reranker workbench` subcommand). It imports engine and
offline, never server.
"""
