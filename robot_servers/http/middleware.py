"""ASGI middleware of the robot server: the bearer token on every path, the session id on every response."""

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
