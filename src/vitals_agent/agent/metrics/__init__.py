"""Prometheus metrics: the registry and its observers (:mod:`.registry`) and the read-only listener
(:mod:`.server`). Imported only when ``[metrics] listen`` is set, so an agent without it never loads
prometheus-client."""
