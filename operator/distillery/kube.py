"""A small async Kubernetes REST client on aiohttp.

The operator needs a handful of calls (create, get, list, merge/apply patch,
delete) on a few resource kinds; a thin client keeps them non-blocking inside
kopf's event loop and lets us count and shape every request.
"""

import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

# kind -> (api prefix, plural, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "Pod": ("/api/v1", "pods", True),
    "Service": ("/api/v1", "services", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Node": ("/api/v1", "nodes", False),
    "Namespace": ("/api/v1", "namespaces", False),
    "Event": ("/api/v1", "events", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "Job": ("/apis/batch/v1", "jobs", True),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "Distillation": ("/apis/distillery.dev/v1alpha1", "distillations", True),
}


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any] | str) -> None:
        self.status = status
        self.body = body
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        message = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"{status} {self.reason}: {message}")


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    insecure: bool = False

    @classmethod
    def from_environment(cls) -> "Credentials":
        """In-cluster service account first, then $KUBECONFIG / ~/.kube/config."""
        if (SA_DIR / "token").exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
            host = os.environ["KUBERNETES_SERVICE_HOST"]
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            host = f"[{host}]" if ":" in host else host
            return cls(server=f"https://{host}:{port}", ca_file=str(SA_DIR / "ca.crt"),
                       token_file=str(SA_DIR / "token"))
        path = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")).split(os.pathsep)[0]
        return cls.from_kubeconfig(Path(path))

    @classmethod
    def from_kubeconfig(cls, path: Path) -> "Credentials":
        config = yaml.safe_load(path.read_text())
        context_name = config.get("current-context")
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next((u["user"] for u in config.get("users", []) if u["name"] == context.get("user")), {})
        return cls(
            server=cluster["server"],
            ca_file=cluster.get("certificate-authority"),
            token=user.get("token"),
            token_file=user.get("tokenFile"),
            client_cert=user.get("client-certificate"),
            client_key=user.get("client-key"),
            insecure=bool(cluster.get("insecure-skip-tls-verify")),
        )

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx

    def bearer(self) -> str | None:
        if self.token_file:
            # Projected service-account tokens rotate; read the file on each request.
            return Path(self.token_file).read_text().strip()
        return self.token


def resource_path(kind: str, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    prefix, plural, namespaced = RESOURCES[kind]
    path = prefix
    if namespaced and namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class KubeClient:
    def __init__(self, credentials: Credentials, timeout: float = 30, user_agent: str = "distillery-operator") -> None:
        self.credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0

    async def __aenter__(self) -> "KubeClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context(), limit=64)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        token = self.credentials.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def request(self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None,
                      content_type: str = "application/json") -> Any:
        headers = self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        self.requests += 1
        async with self._http().request(method, self.credentials.server + path, data=data, params=params,
                                        headers=headers) as resp:
            text = await resp.text()
            payload: Any
            try:
                payload = json.loads(text) if text else {}
            except json.JSONDecodeError:
                payload = text
            if resp.status >= 400:
                raise ApiError(resp.status, payload)
            return payload

    async def watch(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
                    resource_version: str | None = None, timeout_seconds: int = 300):
        """Yield (type, object) from a watch stream until the server closes it."""
        params = {"watch": "true", "timeoutSeconds": str(timeout_seconds), "allowWatchBookmarks": "false"}
        if label_selector:
            params["labelSelector"] = label_selector
        if resource_version:
            params["resourceVersion"] = resource_version
        self.requests += 1
        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30)
        async with self._http().get(self.credentials.server + resource_path(kind, namespace), params=params,
                                    headers=self._headers(), timeout=timeout) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, await resp.text())
            async for line in resp.content:
                if line.strip():
                    event = json.loads(line)
                    yield event["type"], event["object"]

    async def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return await self.request("GET", resource_path(kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict]:
        params = {"labelSelector": label_selector} if label_selector else None
        return (await self.request("GET", resource_path(kind, namespace), params=params)).get("items", [])

    async def create(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create; an existing object is success. Returns (object, created)."""
        ns = manifest["metadata"].get("namespace")
        try:
            return await self.request("POST", resource_path(manifest["kind"], ns), body=manifest), True
        except ApiError as e:
            if e.status == 409 and e.reason == "AlreadyExists":
                return manifest, False
            raise

    async def merge_patch(self, kind: str, name: str, namespace: str | None, patch: dict[str, Any],
                          subresource: str | None = None) -> dict[str, Any]:
        return await self.request("PATCH", resource_path(kind, namespace, name, subresource), body=patch,
                                  content_type="application/merge-patch+json")

    async def apply(self, manifest: dict[str, Any], field_manager: str, force: bool = True) -> dict[str, Any]:
        meta = manifest["metadata"]
        params = {"fieldManager": field_manager, "force": "true" if force else "false"}
        return await self.request("PATCH", resource_path(manifest["kind"], meta.get("namespace"), meta["name"]),
                                  body=manifest, params=params, content_type="application/apply-patch+yaml")

    async def delete(self, kind: str, name: str, namespace: str | None = None,
                     propagation: str = "Background") -> bool:
        """Delete; a missing object is success. Returns whether this call deleted it."""
        try:
            await self.request("DELETE", resource_path(kind, namespace, name),
                               body={"propagationPolicy": propagation})
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise
