"""Connectors apply the planner's replica counts: local processes or Kubernetes."""
