"""The request guard of the simulation service: the API key and the request size cap, checked before a body is read.

Settings live in this module (one replica per process): the replica calls `configure_guard` from its constructor.
"""

import hmac
import json

from services.serve_config import ServeConfig

_SETTINGS: dict = {"api_key": b"", "max_body_bytes": ServeConfig.max_body_bytes}


def configure_guard(api_key: bytes, max_body_bytes: int) -> None:
    _SETTINGS.update(api_key=api_key, max_body_bytes=max_body_bytes)


class _TooLarge(Exception):
    pass


async def _refuse(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": message}).encode()
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + extra})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: the API key (`Authorization: Bearer KEY`, all paths but /healthz; 401) and the request size
    cap (413), checked before a body is parsed. The key is compared in constant time and never logged."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        key, cap = _SETTINGS["api_key"], _SETTINGS["max_body_bytes"]
        if key and scope.get("path") != "/healthz":
            if not hmac.compare_digest(headers.get(b"authorization", b""), b"Bearer " + key):
                return await _refuse(send, 401, "missing or wrong API key (Authorization: Bearer KEY)",
                                     {"www-authenticate": "Bearer"})
        length = headers.get(b"content-length", b"0")
        if not length.isdigit():
            return await _refuse(send, 400, "bad Content-Length header")
        if int(length) > cap:
            return await _refuse(send, 413, f"request body of {int(length)} bytes exceeds the cap of {cap} bytes")
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > cap:
                raise _TooLarge
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await _refuse(send, 413, f"request body exceeds the cap of {cap} bytes")


