"""The semantic router's config for a local stack.

The router ships a default config (`mixroute/router/default_config.yaml`) written for
its own default model name and frontend address. `mixroute up` serves exactly one
model, so it rewrites that file: every model reference becomes the served model and
every endpoint the local frontend. A config given with `--config` is used as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mixroute.errors import ConfigError


def shipped_config_path() -> Path:
    from mixroute.router.config import DEFAULT_CONFIG_PATH

    return DEFAULT_CONFIG_PATH


def local_router_config(
    raw: dict[str, Any], served_name: str, frontend_url: str, run_dir: Path
) -> dict[str, Any]:
    """The shipped config with one model (`served_name`) served at `frontend_url`."""
    if not isinstance(raw.get("models"), dict) or not raw["models"]:
        raise ConfigError(
            "the router's default config has no `models:`; cannot fill in the served model"
        )
    shipped_default = raw.get("default_model") or next(iter(raw["models"]))
    entry = dict(raw["models"].get(shipped_default) or {})
    entry.pop("endpoint", None)
    out = dict(raw)
    out["default_model"] = served_name
    out["default_endpoint"] = frontend_url
    out["models"] = {served_name: entry}
    out["categories"] = [_retarget_category(c, served_name) for c in raw.get("categories") or []]
    cache = out.get("cache")
    if isinstance(cache, dict) and isinstance(cache.get("milvus"), dict):
        # A relative milvus-lite path would land wherever `mixroute up` was started.
        milvus = dict(cache["milvus"])
        uri = str(milvus.get("uri", ""))
        if uri and "://" not in uri and not Path(uri).is_absolute():
            milvus["uri"] = str(run_dir / Path(uri).name)
        out["cache"] = {**cache, "milvus": milvus}
    return out


def _retarget_category(category: dict[str, Any], served_name: str) -> dict[str, Any]:
    scores = category.get("model_scores") or []
    if not scores:
        return dict(category)
    best = max(scores, key=lambda s: float(s.get("score", 0.0)))
    return {**category, "model_scores": [{**best, "model": served_name}]}


def write_router_config(
    user_config: Path | None,
    served_name: str,
    frontend_url: str,
    run_dir: Path,
) -> Path:
    """The config path to pass to `mixroute router --config`; validated before any child starts."""
    from mixroute.router.config import load_config

    if user_config is not None:
        load_config(user_config)
        return user_config
    source = shipped_config_path()
    try:
        raw = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the router's shipped config {source}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    # A directory of its own: the router watches the config's directory for edits, and the
    # run dir's logs and discovery heartbeats would otherwise wake it constantly.
    dest = run_dir / "router" / "config.yaml"
    dest.parent.mkdir(parents=True, exist_ok=True)
    text = "# Written by `mixroute up` from the router's shipped default config.\n"
    text += yaml.safe_dump(
        local_router_config(raw, served_name, frontend_url, run_dir), sort_keys=False
    )
    dest.write_text(text)
    load_config(dest)
    return dest
