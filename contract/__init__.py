"""The contract: what every other part of the cluster agrees on.

Settings, the generation request and the HTTP body it comes from, templates, errors, job
and stage records, the typed messages that cross deployment boundaries, the output
store and the names of the two experts. It imports nothing else of this project, so
every layer above may use it (pyproject.toml's import-linter contract keeps it so).
"""
