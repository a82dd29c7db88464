"""ASGI middleware of the robot server: the bearer token on every path, the session id on every response,
and the request body size limit."""

from __future__ import annotations

import hmac
import json

SESSION_HEADER = "x-robot-session"


class TokenAndSessionMiddleware:
    """Pure ASGI: bearer token on every path, and the server session id on every response.

    A client that sends the session id it knows gets 409 once the server has restarted, so a
    command from a stale episode never reaches a fresh backend.
    """

    def __init__(self, app, token: str | None, session: str):
        self.app = app
        self.token = None if token is None else token.encode()
        self.session = session.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.token is not None:
            auth = headers.get(b"authorization")
            if auth is None:
                return await self._reject(send, 401, "missing bearer token: send the header 'Authorization: Bearer <token>'")
            scheme, _, credential = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self.token):
                return await self._reject(send, 403, "invalid bearer token in the 'Authorization' header")
        expected = headers.get(SESSION_HEADER.encode())
        if expected and expected != self.session:
            return await self._reject(
                send, 409, f"robot server restarted: session {expected.decode(errors='replace')} is gone "
                           f"(now {self.session.decode()}); reset the episode")

        async def send_with_session(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(SESSION_HEADER.encode(), self.session)]
            await send(message)

        await self.app(scope, receive, send_with_session)

    async def _reject(self, send, status: int, message: str):
        body = json.dumps({"detail": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (SESSION_HEADER.encode(), self.session)]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Pure ASGI: a request body over ``max_bytes`` is answered 413 before any route runs.

    A declared ``Content-Length`` is judged before a byte of the body is read; a chunked body is read
    here, counted as it streams, and refused as soon as it passes the limit (robot commands are a few
    hundred bytes, so holding one whole costs nothing). The 413 closes the connection, so the server
    never reads the rest.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:  # h11 has checked it is a number and will deliver no more than it says
            if int(length) > self.max_bytes:
                return await self._too_large(send, f"Content-Length {int(length)}")
            return await self.app(scope, receive, send)
        if b"transfer-encoding" not in headers:
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its body ended
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(send, f"chunked, {size} bytes so far")
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def receive_body():
            return replay.pop() if replay else await receive()

        await self.app(scope, receive_body, send)

    async def _too_large(self, send, what: str):
        body = json.dumps({"detail": f"request body too large ({what}); this server takes at most "
                                     f"{self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
