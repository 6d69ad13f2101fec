"""Request signals: PII, jailbreak, category, keywords (see runner.py)."""

from __future__ import annotations

from mixroute.router.signals.models import SignalModels, load_signal_models
from mixroute.router.signals.runner import SignalResults, SignalRunner

__all__ = ["SignalModels", "SignalResults", "SignalRunner", "load_signal_models"]
