"""Discovery, event plane and request plane: the three interfaces every component uses.

Components never import a concrete backend; they call `open_discovery(url)`,
`open_events(url, ...)` and the request-plane factories, which pick the backend from the
URL scheme (registry in each subpackage's `__init__`).
"""
