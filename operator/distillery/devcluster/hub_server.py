"""A local model hub: the routes huggingface_hub reads when HF_ENDPOINT points here, with gated repos.

Stands in for huggingface.co in tests: transformers' `from_pretrained("org/name")` resolves each file with a
HEAD then a GET on `/{repo}/resolve/{revision}/{path}` (answered with the `X-Repo-Commit`, `ETag` and
`Content-Length` headers the client caches by) and may list the repo (`/api/models/{repo}/tree/...`) or read its
info (`/api/models/{repo}`). A gated repo answers 401 with `X-Error-Code: GatedRepo`, as the hub does, to any
request without `Authorization: Bearer <token>`; huggingface_hub turns that into its GatedRepoError. Written
here because no maintained package serves a directory with the hub's protocol.

    python -m distillery.devcluster.hub_server --repo org/tiny=/path/to/model --gated org/tiny --token hf_x
"""

import argparse
import asyncio
import hashlib
import json
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

HEADER_COMMIT = "X-Repo-Commit"
HEADER_ERROR_CODE = "X-Error-Code"
HEADER_ERROR_MESSAGE = "X-Error-Message"


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class HubServer:
    def __init__(self, repos: Mapping[str, Path], *, gated: Sequence[str] = (), token: str | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.repos = {repo: Path(path) for repo, path in repos.items()}
        self.gated = set(gated)
        self.token = token
        self.host, self.port = host, port
        self.refused = 0
        """Requests answered 401 (a gated repo without the token)."""
        self.served: list[str] = []
        """Files sent (GET), as repo/path."""
        self._runner: web.AppRunner | None = None
        self._commits: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def commit(self, repo: str) -> str:
        """A 40-hex commit id for the repo's current files (huggingface_hub caches snapshots by it)."""
        if repo not in self._commits:
            root = self.repos[repo]
            digest = hashlib.sha1(usedforsecurity=False)
            for name in _files(root):
                digest.update(f"{name}:{_file_hash(root / name)}\n".encode())
            self._commits[repo] = digest.hexdigest()
        return self._commits[repo]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{org}/{name}/resolve/{revision}/{path:.+}", self._resolve)  # and HEAD
        app.router.add_get("/api/models/{org}/{name}", self._info)
        app.router.add_get("/api/models/{org}/{name}/revision/{revision}", self._info)
        app.router.add_get("/api/models/{org}/{name}/tree/{revision}", self._tree)
        app.router.add_get("/api/models/{org}/{name}/tree/{revision}/{path:.+}", self._tree)
        return app

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def _repo(self, request: web.Request) -> tuple[str, Path]:
        """The repo of the request, or the hub's error for a missing or gated one."""
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        if repo not in self.repos:
            raise _error(404, "RepoNotFound", f"Repository {repo} not found")
        if repo in self.gated and request.headers.get("Authorization") != f"Bearer {self.token}":
            self.refused += 1
            raise _error(401, "GatedRepo", f"Access to model {repo} is restricted. You must have access to it "
                                           "and be authenticated to access it.")
        return repo, self.repos[repo]

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo, root = self._repo(request)
        path = root / request.match_info["path"]
        if not path.is_file() or not path.resolve().is_relative_to(root.resolve()):
            raise _error(404, "EntryNotFound", f"{request.match_info['path']} does not exist in {repo}")
        headers = {HEADER_COMMIT: self.commit(repo), "ETag": f'"{_file_hash(path)}"',
                   "Content-Length": str(path.stat().st_size)}
        if request.method == "HEAD":
            return web.Response(headers=headers)
        self.served.append(f"{repo}/{request.match_info['path']}")
        return web.Response(body=path.read_bytes(), headers=headers)

    async def _info(self, request: web.Request) -> web.Response:
        repo, root = self._repo(request)
        return web.json_response({
            "id": repo, "modelId": repo, "sha": self.commit(repo), "private": False,
            "gated": "manual" if repo in self.gated else False,
            "siblings": [{"rfilename": name} for name in _files(root)],
        })

    async def _tree(self, request: web.Request) -> web.Response:
        repo, root = self._repo(request)
        base = root / request.match_info.get("path", "")
        if not base.is_dir():
            raise _error(404, "EntryNotFound", f"{request.match_info.get('path', '')} does not exist in {repo}")
        entries: list[dict[str, Any]] = []
        for child in sorted(base.iterdir()):
            rel = str(child.relative_to(root))
            if child.is_dir():
                entries.append({"type": "directory", "path": rel, "oid": hashlib.sha1(rel.encode()).hexdigest()})
            else:
                entries.append({"type": "file", "path": rel, "size": child.stat().st_size,
                                "oid": _file_hash(child)[:40]})
        return web.json_response(entries)


def _error(status: int, code: str, message: str) -> web.HTTPException:
    """The hub's error: huggingface_hub reads the error code header to pick its exception."""
    kind = web.HTTPUnauthorized if status == 401 else web.HTTPNotFound
    return kind(headers={HEADER_ERROR_CODE: code, HEADER_ERROR_MESSAGE: message},
                text=json.dumps({"error": message}), content_type="application/json")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distillery.devcluster.hub_server",
                                     description="A local model hub for tests (HF_ENDPOINT).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--repo", action="append", default=[], help="org/name=DIRECTORY (repeatable)")
    parser.add_argument("--gated", action="append", default=[], help="a repo that needs the token")
    parser.add_argument("--token", help="the token gated repos accept")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    repos = dict(item.split("=", 1) for item in args.repo)
    async with HubServer({k: Path(v) for k, v in repos.items()}, gated=args.gated, token=args.token,
                         host=args.host, port=args.port) as hub:
        print(f"hub_server listening on {hub.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    asyncio.run(serve(parse_args(list(sys.argv[1:] if argv is None else argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
