"""What `mixroute up` prints once the stack is ready."""

from __future__ import annotations

import json

from mixroute.up.options import UpOptions
from mixroute.up.plan import ModelChoice, worker_groups


def ready_banner(
    options: UpOptions, model: ModelChoice, elapsed_s: float, extra_lines: list[str]
) -> str:
    workers = ", ".join(f"{g.count} {g.worker_type}" for g in worker_groups(options))
    # max_tokens: the mocker has no end-of-text and would write until the context is full.
    body = json.dumps({"model": "MoM", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 32})
    lines = [
        "",
        f"mixroute is ready ({elapsed_s:.1f}s): model {model.served_name!r} on {workers} worker(s), engine {options.engine}",
    ]
    if options.has_router:
        edge = "Envoy -> semantic router (ext_proc)" if options.has_envoy else "semantic router"
        lines.append(f"  {edge:<38} {options.router_url}/v1/chat/completions")
    lines.append(
        f"  {'frontend (KV-aware, ' + options.router_mode + ')':<38} {options.frontend_url}/v1/chat/completions"
    )
    lines.append(f"  {'discovery':<38} {options.discovery_url}")
    lines.append(f"  {'events':<38} {options.events_url}")
    lines.extend(f"  {line}" for line in extra_lines)
    lines.append(f"  {'logs':<38} {options.log_dir}")
    target = options.router_url if options.has_router else options.frontend_url
    if not options.has_router:
        body = body.replace('"MoM"', json.dumps(model.served_name))
    lines += [
        "",
        "Try:",
        f"  curl -s {target}/v1/chat/completions -H 'Content-Type: application/json' \\",
        f"    -d '{body}'",
        "",
        "Press Ctrl-C to stop.",
        "",
    ]
    return "\n".join(lines)
