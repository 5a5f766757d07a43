"""The operator's and the CLI's Kubernetes access: one credential source, loaded by the `kubernetes` package.

The official client's config loaders handle what real kubeconfigs hold (inline `*-data`, exec plugins such
as kubelogin, `aws eks get-token` and `gke-gcloud-auth-plugin`, several files in $KUBECONFIG, contexts,
relative paths) and the in-cluster service account. The same `Configuration` feeds kopf's watches (through
`connection_info`, returned by the operator's login handler) and every write below, so a process never
watches with one identity and writes with another.

The client is synchronous; `KubeClient` runs its calls in a dedicated thread pool so the event loop never
blocks on the network. It keeps a dict-in, dict-out surface over the raw REST paths: the planner builds
plain manifests, and the generated model classes would only be converted back and forth.
"""

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kopf
import urllib3
import yaml
from kubernetes import client, config
from kubernetes.config import ConfigException

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"
REQUEST_THREADS = 32
"""Concurrent API calls; more than the operator's workers so status writes never queue behind creates."""

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


class CredentialsError(Exception):
    """No usable credentials: the message is one line for the user."""


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any] | str) -> None:
        self.status = status
        self.body = body
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        self.message = str(body.get("message", body) if isinstance(body, dict) else body)
        super().__init__(f"{status} {self.reason}: {self.message}")


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SA_DIR / "token").exists()


def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> client.Configuration:
    """Credentials like kubectl's: the pod's service account in a cluster (unless a kubeconfig or context is
    named), else the kubeconfig (`kubeconfig`, else $KUBECONFIG merged, else ~/.kube/config)."""
    configuration = client.Configuration()
    if kubeconfig is None and context is None and in_cluster():
        config.load_incluster_config(client_configuration=configuration)
        return configuration
    try:
        # The library reads $KUBECONFIG when it is imported; read it now.
        config.load_kube_config(config_file=_kubeconfig_path(kubeconfig), context=context,
                                client_configuration=configuration, persist_config=False)
    # The loader reports a broken file through many types; each becomes one line for the user.
    except (ConfigException, OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as err:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise CredentialsError(f"cannot load Kubernetes credentials from {where}"
                               f"{f' (context {context})' if context else ''}: {_one_line(err)}") from None
    return configuration


def _one_line(err: Exception) -> str:
    """YAML errors span several lines; a user gets one."""
    return " ".join(str(err).split())


def _kubeconfig_path(kubeconfig: str | None) -> str:
    """kubectl's order: the flag, then $KUBECONFIG (a list of files, merged), then ~/.kube/config."""
    return kubeconfig or os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """Like kubectl: the pod's own namespace in a cluster, else the context's, else 'default'."""
    if kubeconfig is None and context is None and in_cluster():
        return (SA_DIR / "namespace").read_text().strip()
    try:
        contexts, current = config.list_kube_config_contexts(_kubeconfig_path(kubeconfig))
    except (ConfigException, OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise CredentialsError(f"cannot read the kubeconfig: {_one_line(err)}") from None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return ((chosen or {}).get("context") or {}).get("namespace") or "default"


def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """The same credentials in kopf's terms, for its watches (from a `@kopf.on.login` handler)."""
    header = configuration.get_api_key_with_prefix("BearerToken") or ""
    scheme, _, token = header.partition(" ") if " " in header else ("", "", header)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        username=configuration.username or None,
        password=configuration.password or None,
        trust_env=True,
    )


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
    """Async create/get/list/patch/delete of plain manifests over the official client's transport."""

    def __init__(self, configuration: client.Configuration, timeout: float = 30,
                 user_agent: str = "distillery-operator") -> None:
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, REQUEST_THREADS)
        self.api = client.ApiClient(configuration)
        self.api.user_agent = user_agent
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(REQUEST_THREADS, thread_name_prefix="kube")

    async def __aenter__(self) -> "KubeClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api.close()

    def _call(self, method: str, path: str, body: Any, params: dict[str, str] | None,
              content_type: str) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, _ = self.api.param_serialize(
            method, path, query_params=list((params or {}).items()), header_params=headers, body=body,
            auth_settings=["BearerToken"])
        response = self.api.call_api(method, url, headers, body, _request_timeout=self._timeout)
        data = response.read()
        payload: Any
        try:
            payload = json.loads(data) if data else {}
        except json.JSONDecodeError:
            payload = data.decode(errors="replace")
        if response.status >= 400:
            raise ApiError(response.status, payload)
        return payload

    async def request(self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None,
                      content_type: str = "application/json") -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, method, path, body, params, content_type)

    async def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self.request("GET", resource_path(kind, namespace, name))
            return found
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
                   field_selector: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v} or None
        items: list[dict[str, Any]] = (await self.request("GET", resource_path(kind, namespace), params=params)
                                       ).get("items", [])
        return items

    async def create(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create; an existing object is success. Returns (object, created)."""
        ns = manifest["metadata"].get("namespace")
        try:
            created: dict[str, Any] = await self.request("POST", resource_path(manifest["kind"], ns), body=manifest)
            return created, True
        except ApiError as e:
            if e.status == 409 and e.reason == "AlreadyExists":
                return manifest, False
            raise

    async def merge_patch(self, kind: str, name: str, namespace: str | None, patch: dict[str, Any],
                          subresource: str | None = None) -> dict[str, Any]:
        patched: dict[str, Any] = await self.request("PATCH", resource_path(kind, namespace, name, subresource),
                                                     body=patch, content_type="application/merge-patch+json")
        return patched

    async def apply(self, manifest: dict[str, Any], field_manager: str) -> dict[str, Any]:
        """Server-side apply, forcing ownership of the fields this manifest sets."""
        meta = manifest["metadata"]
        applied: dict[str, Any] = await self.request(
            "PATCH", resource_path(manifest["kind"], meta.get("namespace"), meta["name"]), body=manifest,
            params={"fieldManager": field_manager, "force": "true"}, content_type="application/apply-patch+yaml")
        return applied

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


TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)
"""What a call raises when the API server cannot be reached (as opposed to an `ApiError` answer)."""
