"""The operator's liveness endpoint: bound when the process starts, served from kopf's event loop.

Not kopf's own (`liveness_endpoint`): kopf binds that port only once its startup handlers have run, so a port
that is taken fails the operator after its metrics already answer, and it reads port 0 as 80, so it cannot be
told to take any free port. Bound here before anything else listens, a taken port fails the start at once; port
0 takes a free one, and the log says which. It answers while the loop is responsive, as kopf's did: the
operator registers no probe handlers, whose results were all kopf's endpoint added.
"""

import socket
import urllib.parse

from aiohttp import web


class LivenessEndpoint:
    """An `http://host:port/path` URL's socket, bound at construction and answered once `serve` ran."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"liveness endpoint {url!r}: expected http://host:port/path")
        self.path = parts.path or "/"
        family = socket.AF_INET6 if ":" in parts.hostname else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            # Bound, not listening: until `serve`, a probe is refused rather than left waiting.
            self.socket.bind((parts.hostname, parts.port if parts.port is not None else 80))
        except OSError:
            self.socket.close()
            raise
        self.host = parts.hostname
        self.port: int = self.socket.getsockname()[1]
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    async def serve(self) -> None:
        async def alive(_: web.Request) -> web.Response:
            return web.json_response({})

        app = web.Application()
        app.router.add_get(self.path, alive)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, self.socket).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.socket.close()
