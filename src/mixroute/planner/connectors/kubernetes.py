"""Scales worker Deployments through the Kubernetes API's `scale` subresource.

Runs in the cluster with the pod's service-account token (the chart's Role allows
get/patch on `deployments/scale` of the release's worker Deployments only). Plain HTTPS
with httpx: no Kubernetes client package. The token file is re-read on every call
because projected service-account tokens rotate.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from mixroute.errors import ConfigError
from mixroute.logs import kv
from mixroute.planner.connectors.base import ScaleError
from mixroute.planner.policy import Pool

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"
FIELD_MANAGER = "mixroute-planner"
"""Names the planner as the owner of `spec.replicas` in managedFields."""


@dataclass(slots=True, frozen=True)
class ApiAccess:
    base_url: str
    token_path: Path | None
    """None: no Authorization header (e.g. through `kubectl proxy`)."""
    verify: str | bool
    """CA bundle path, or False (tests against a plain-HTTP stand-in only)."""

    @classmethod
    def in_cluster(cls) -> ApiAccess:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ConfigError(
                "--connector kubernetes runs inside a pod (KUBERNETES_SERVICE_HOST is unset); "
                "use --connector local outside a cluster"
            )
        token = SERVICE_ACCOUNT_DIR / "token"
        if not token.exists():
            raise ConfigError(
                f"no service-account token at {token}; give the planner pod a ServiceAccount"
            )
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", token, str(SERVICE_ACCOUNT_DIR / "ca.crt"))


def in_cluster_namespace() -> str | None:
    path = SERVICE_ACCOUNT_DIR / "namespace"
    return path.read_text().strip() if path.exists() else None


class KubernetesConnector:
    def __init__(
        self,
        access: ApiAccess,
        namespace: str,
        deployments: dict[Pool, str],
        *,
        timeout_s: float = 10.0,
    ) -> None:
        if not deployments:
            raise ConfigError(
                "the kubernetes connector needs --prefill-deployment and/or --decode-deployment"
            )
        self._access = access
        self._namespace = namespace
        self._deployments = dict(deployments)
        self._client = httpx.AsyncClient(
            base_url=access.base_url, verify=access.verify, timeout=timeout_s
        )

    def pools(self) -> tuple[Pool, ...]:
        return tuple(self._deployments)

    def _path(self, pool: Pool) -> str:
        name = self._deployments.get(pool)
        if name is None:
            raise ScaleError(f"no Deployment configured for the {pool} pool")
        return f"/apis/apps/v1/namespaces/{self._namespace}/deployments/{name}/scale"

    def _headers(self) -> dict[str, str]:
        if self._access.token_path is None:
            return {"Accept": "application/json"}
        try:
            token = self._access.token_path.read_text().strip()
        except OSError as exc:
            raise ScaleError(
                f"cannot read the service-account token {self._access.token_path}: {exc}"
            ) from exc
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    async def current_replicas(self, pool: Pool) -> int:
        body = await self._call("GET", pool)
        return _replicas(body, pool)

    async def set_replicas(self, pool: Pool, replicas: int) -> None:
        if replicas < 0:
            raise ScaleError(f"replicas must be >= 0 (got {replicas})")
        body = await self._call("PATCH", pool, {"spec": {"replicas": replicas}})
        got = _replicas(body, pool)
        if got != replicas:
            raise ScaleError(
                f"{self._deployments[pool]}: asked for {replicas} replicas, API answered {got}"
            )
        log.info("scaled %s", kv(pool=pool, deployment=self._deployments[pool], replicas=replicas))

    async def _call(
        self, method: str, pool: Pool, patch: dict[str, object] | None = None
    ) -> dict[str, object]:
        path = self._path(pool)
        headers = self._headers()
        if patch is not None:
            headers["Content-Type"] = MERGE_PATCH
        try:
            params = {"fieldManager": FIELD_MANAGER} if patch is not None else None
            response = await self._client.request(
                method, path, headers=headers, json=patch, params=params
            )
        except httpx.HTTPError as exc:
            raise ScaleError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise ScaleError(
                f"{method} {path}: HTTP {response.status_code}: {_status_message(response)}"
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise ScaleError(f"{method} {path}: response is not JSON") from exc
        if not isinstance(body, dict):
            raise ScaleError(f"{method} {path}: expected a Scale object")
        return body

    async def close(self) -> None:
        await self._client.aclose()


def _replicas(body: dict[str, object], pool: Pool) -> int:
    spec = body.get("spec")
    replicas = spec.get("replicas", 0) if isinstance(spec, dict) else None
    if not isinstance(replicas, int):
        raise ScaleError(f"{pool}: Scale object without an integer spec.replicas")
    return replicas


def _status_message(response: httpx.Response) -> str:
    """Kubernetes errors are `Status` objects with a readable `message`."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return response.text[:200]
