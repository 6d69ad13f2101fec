"""Direct (same-host) KV transfer between a prefill and a decode engine: the prefill's KV
cache as one shareable tensor, the decode side's mapping of it, and the lent blocks."""
