"""Optional bearer-token auth (``CAMDRIFT_API_TOKENS``), an ASGI middleware.

A middleware rather than a route dependency so that nothing slips past it: unknown routes,
``/openapi.json``, ``/docs`` and ``/metrics`` are covered too. Only the health probes are
open. Tokens are compared in constant time against every configured token, and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from service.problems import TYPE_PREFIX, Problem, problem_response

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def token_matches(presented: str, tokens: Sequence[str]) -> bool:
    """True when ``presented`` equals one token; every token is compared, no early exit."""
    given = presented.encode()
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given, token.encode())
    return found


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class BearerAuthMiddleware:
    """Answer 401 problem+json unless the request carries a configured bearer token."""

    def __init__(self, app: ASGIApp, tokens: Sequence[str]) -> None:
        self.app = app
        self.tokens = [t for t in tokens if t]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.tokens or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        token = bearer_token(header)
        if token is not None and token_matches(token, self.tokens):
            await self.app(scope, receive, send)
            return
        challenge = 'Bearer realm="camdrift"'
        if token is not None:
            challenge += ', error="invalid_token"'
        problem = Problem(
            type=TYPE_PREFIX + "unauthorized",
            title="Unauthorized",
            status=401,
            detail="a valid bearer token is required (Authorization: Bearer <token>)"
            if token is None
            else "the bearer token is not valid",
        )
        response = problem_response(problem, {"WWW-Authenticate": challenge})
        await response(scope, receive, send)
