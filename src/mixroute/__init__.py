"""mixroute: a semantic router in front of a disaggregated, KV-aware LLM serving stack."""

__version__ = "0.1.0"
