"""HTTP routes: generate (incl. server-sent events), models and trade-off tables, health and metrics."""
