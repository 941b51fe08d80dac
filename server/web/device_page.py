"""The device-login approval page (RFC 8628 §3.3): sign in with an API key, check the login, decide.

    GET  /device[?user_code=…]   signed out: the sign-in form; signed in: the code form, or the
                                 login the code names, with its scopes and Approve / Deny
    POST /device/session         sign in (api_key, user_code?, csrf)
    POST /device/decision        approve or deny (csrf, user_code, decision, scopes…)
    POST /device/signout         end the session (csrf)
    GET  /device/static/style.css

Plain HTML forms, no JavaScript. The API key is read once, at sign-in, and never shown, stored
or logged; the session cookie holds an opaque id of which the database keeps only the hash, and
every request re-reads the key behind it, so revoking the key ends the session. Finding and
deciding a login is DeviceLogins' work, shared with the API: the same guess limits, the same
rules for what an approval may grant.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from urllib.parse import urlencode

from google.rpc import code_pb2

from gateway.asgi import Receive, Scope, Send
from server.api.device_auth import VERIFICATION_PATH, DeviceLogins
from server.api.errors import status_for
from server.api.interceptors import KeyLookup
from server.domain import scopes
from server.domain.device_auth import (
    SESSION_LIFETIME,
    ApproverSession,
    PendingAuthorization,
    format_user_code,
)
from server.domain.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from server.web.csrf import (
    CSRF_COOKIE,
    Origin,
    looks_like_form_token,
    mint_form_token,
    origin_of,
    same_origin,
    session_token,
    tokens_match,
)
from server.web.rendering import STYLESHEET, STYLESHEET_VERSION, render, when
from server.web.requests import (
    BadRequest,
    ClientGone,
    Request,
    every,
    first,
    read_form,
    read_request,
)
from server.web.responses import CSS, Response, redirect, set_cookie

log = logging.getLogger(__name__)

SESSION_COOKIE = "roz_device_session"
MAX_BODY_BYTES = 64 * 1024
APPROVER_SCOPE = "api-keys:admin"  # the scope that may mint keys, as over the API
_SESSION_SECONDS = int(SESSION_LIFETIME.total_seconds())
_MAX_SHOWN_CODE = 32  # what a person typed is shown back at most this long
_SESSION_PATH = VERIFICATION_PATH + "/session"
_DECISION_PATH = VERIFICATION_PATH + "/decision"
_SIGNOUT_PATH = VERIFICATION_PATH + "/signout"
_STYLESHEET_PATH = VERIFICATION_PATH + "/static/style.css"
_STYLESHEET_CACHE = (b"cache-control", b"public, max-age=86400")
_UNKNOWN_CODE = (
    "No login is waiting for that code: it is mistyped, expired or already used. "
    "Check the code your device shows."
)


@dataclass(frozen=True)
class _Visitor:
    """Who sent a request: the session cookie's id ("" without one) and, if it is still good,
    the approver behind it."""

    session_id: str
    approver: ApproverSession | None

    @property
    def stale(self) -> bool:
        """A cookie that names no usable session, to be deleted."""
        return bool(self.session_id) and self.approver is None


@dataclass(frozen=True)
class _ScopeChoice:
    value: str
    grantable: bool  # the approver holds it; only those can be ticked


class DevicePage:
    """The ASGI app mounted at /device. `authenticate` is the server's API-key lookup;
    `base_url` is where people reach the server (its origin is this page's own, and https
    makes the cookies Secure)."""

    def __init__(
        self,
        logins: DeviceLogins,
        authenticate: KeyLookup,
        *,
        base_url: str,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._logins = logins
        self._authenticate = authenticate
        self._secure = base_url.lower().startswith("https://")
        own = origin_of(base_url)
        self._origins: frozenset[Origin] = frozenset() if own is None else frozenset({own})
        self._max_body = max_body_bytes
        self._stylesheet_url = f"{_STYLESHEET_PATH}?v={STYLESHEET_VERSION}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"the device page serves http, not {scope['type']!r}")
        request = read_request(scope)
        try:
            response = await self._route(request, receive)
        except ClientGone:
            return
        except Exception as exc:  # the error page must not itself fail, nor say too much
            response = self._failure(exc)
        await response.send(send, head=request.method == "HEAD")

    async def _route(self, request: Request, receive: Receive) -> Response:
        path = request.path
        allowed: tuple[str, ...]
        if path in (VERIFICATION_PATH, _STYLESHEET_PATH):
            allowed = ("GET", "HEAD")
        elif path in (_SESSION_PATH, _DECISION_PATH, _SIGNOUT_PATH):
            allowed = ("POST",)
        else:
            return self._message(
                404, "Page not found", ["There is no page here."], link=self._start_link()
            )
        if request.method not in allowed:
            response = self._message(405, "Method not allowed", ["This page cannot do that."])
            return response.with_header(b"allow", ", ".join(allowed).encode())
        try:
            if path == _STYLESHEET_PATH:
                return Response(200, STYLESHEET, CSS, [_STYLESHEET_CACHE])
            if path == VERIFICATION_PATH:
                return await self._index(request)
            if request.origin is not None and not self._same_origin(request):
                log.info("device page: refused a post from origin %r", request.origin[:100])
                return self._message(
                    403,
                    "Refused",
                    ["This form was sent from another site. Nothing was changed."],
                    link=self._start_link(),
                )
            form = await read_form(request, receive, self._max_body)
        except BadRequest as exc:
            return self._message(exc.status, "Cannot read this request", [exc.message])
        if path == _SESSION_PATH:
            return await self._sign_in(request, form)
        if path == _DECISION_PATH:
            return await self._decide(request, form)
        return await self._sign_out(request, form)

    def _same_origin(self, request: Request) -> bool:
        """The configured base URL's origin, or the one this request was addressed to (what a
        browser sends when the page was reached under another name, e.g. 127.0.0.1)."""
        allowed = set(self._origins)
        addressed = origin_of(f"{request.scheme}://{request.host}") if request.host else None
        if addressed is not None:
            allowed.add(addressed)
        return same_origin(request.origin or "", allowed)

    # -- GET /device ---------------------------------------------------------------------------

    async def _index(self, request: Request) -> Response:
        user_code = first(request.query(), "user_code").strip()
        visitor = await self._visitor(request)
        if visitor.approver is None:
            return self._sign_in_form(request, 200, visitor, user_code=user_code)
        if not user_code:
            return self._code_form(200, visitor)
        try:
            login = await self._logins.find(user_code, self._clients(request, visitor.approver))
        except NotFound:
            return self._code_form(404, visitor, user_code=user_code, error=_UNKNOWN_CODE)
        except ResourceExhausted as exc:
            return self._too_many(visitor, user_code, exc)
        return self._confirmation(200, visitor, login)

    # -- POST /device/session ------------------------------------------------------------------

    async def _sign_in(self, request: Request, form: list[tuple[str, str]]) -> Response:
        user_code = first(form, "user_code").strip()[:_MAX_SHOWN_CODE]
        previous = request.cookies.get(SESSION_COOKIE, "")
        visitor = _Visitor("", None)  # a failed sign-in leaves an earlier one as it was
        if not tokens_match(request.cookies.get(CSRF_COOKIE, ""), first(form, "csrf")):
            return self._sign_in_form(
                request,
                403,
                visitor,
                user_code=user_code,
                error="This sign-in form expired, or your browser did not keep its cookie. "
                "Try again (this page needs cookies).",
            )
        secret = first(form, "api_key").strip()
        principal = await self._authenticate(secret) if secret else None
        if principal is None:
            log.info("device page: sign-in with an invalid API key from %s", request.client)
            return self._sign_in_form(
                request,
                401,
                visitor,
                user_code=user_code,
                error="That API key is invalid, expired or revoked.",
            )
        if not scopes.grants(principal.scopes, APPROVER_SCOPE):
            log.info(
                "device page: sign-in refused to key %s without %s",
                principal.key_id,
                APPROVER_SCOPE,
                extra={"tenant": str(principal.tenant_id)},
            )
            return self._sign_in_form(
                request,
                403,
                visitor,
                user_code=user_code,
                error=f"This API key cannot approve device logins: it lacks the scope "
                f"{APPROVER_SCOPE}. Sign in with a key that has it, or has admin.",
            )
        repository = self._logins.repository()
        if previous:
            await repository.end_session(previous)  # one sign-in replaces the last
        session_id = await repository.start_session(principal, self._logins.clock())
        if session_id is None:  # revoked or expired between the two queries
            return self._sign_in_form(
                request,
                401,
                visitor,
                user_code=user_code,
                error="That API key is invalid, expired or revoked.",
            )
        log.info(
            "device page: key %s signed in",
            principal.key_id,
            extra={"tenant": str(principal.tenant_id)},
        )
        location = VERIFICATION_PATH
        if user_code:
            location += "?" + urlencode({"user_code": user_code})
        cookie = self._session_cookie(session_id, _SESSION_SECONDS)
        return redirect(location).with_header(*cookie)

    # -- POST /device/decision -----------------------------------------------------------------

    async def _decide(self, request: Request, form: list[tuple[str, str]]) -> Response:
        user_code = first(form, "user_code").strip()
        visitor = await self._visitor(request)
        approver = visitor.approver
        if approver is None:
            return self._sign_in_form(
                request,
                401,
                visitor,
                user_code=user_code[:_MAX_SHOWN_CODE],
                error="You are not signed in (or your sign-in ended), so nothing was decided. "
                "Sign in to continue.",
            )
        if not tokens_match(session_token(visitor.session_id), first(form, "csrf")):
            return self._message(
                403,
                "Refused",
                ["This form does not belong to your sign-in, so nothing was decided."],
                visitor=visitor,
                link=self._code_link(user_code),
            )
        decision = first(form, "decision")
        if decision not in ("approve", "deny"):
            return self._message(
                400, "Choose Approve or Deny", ["Nothing was decided."], visitor=visitor
            )
        if not user_code:
            return self._code_form(400, visitor, error="Enter the code your device shows.")
        try:
            login = await self._logins.find(user_code, self._clients(request, approver))
        except NotFound:
            return self._not_waiting(visitor)
        except ResourceExhausted as exc:
            return self._too_many(visitor, user_code, exc)

        approve = decision == "approve"
        chosen = every(form, "scopes")
        if approve and not chosen:
            # An empty choice would mean "the default" to DeviceLogins: never what unticking
            # every box meant.
            return self._confirmation(
                400, visitor, login, error="Tick at least one scope to approve, or deny."
            )
        default = login.requested_scopes or approver.principal.scopes
        try:
            granted = await self._logins.decide(
                login,
                approver.principal,
                approve=approve,
                scopes=None if set(chosen) == default else chosen,
            )
        except PermissionDenied as exc:
            return self._message(403, "Cannot approve", [exc.message], visitor=visitor)
        except InvalidArgument as exc:
            lines = [exc.message, *(violation.description for violation in exc.violations)]
            return self._message(400, "Cannot approve", lines, visitor=visitor)
        except NotFound:
            return self._not_waiting(visitor)
        if not approve:
            return self._message(
                200,
                "Denied",
                ["Denied: the device gets no access. You can close this window."],
                visitor=visitor,
            )
        return self._message(
            200,
            "Approved",
            [
                "Approved: the device now has access. You can close this window.",
                f"Granted scopes: {', '.join(sorted(granted))}.",
            ],
            visitor=visitor,
        )

    # -- POST /device/signout ------------------------------------------------------------------

    async def _sign_out(self, request: Request, form: list[tuple[str, str]]) -> Response:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        if session_id:
            if not tokens_match(session_token(session_id), first(form, "csrf")):
                return self._message(
                    403,
                    "Refused",
                    ["This form does not belong to your sign-in; you are still signed in."],
                    link=self._start_link(),
                )
            await self._logins.repository().end_session(session_id)
        return redirect(VERIFICATION_PATH).with_header(*self._session_cookie("", 0))

    # -- sessions ------------------------------------------------------------------------------

    async def _visitor(self, request: Request) -> _Visitor:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        if not session_id:
            return _Visitor("", None)
        approver = await self._logins.repository().find_session(session_id, self._logins.clock())
        if approver is not None and not scopes.grants(approver.principal.scopes, APPROVER_SCOPE):
            approver = None
        return _Visitor(session_id, approver)

    def _session_cookie(self, session_id: str, max_age: int) -> tuple[bytes, bytes]:
        return set_cookie(
            SESSION_COOKIE,
            session_id,
            path=VERIFICATION_PATH,
            secure=self._secure,
            max_age=max_age,
        )

    @staticmethod
    def _clients(request: Request, approver: ApproverSession) -> tuple[tuple[str, object], ...]:
        """Whom a wrong code counts against: the signed-in key and the browser's address."""
        return (("key", approver.principal.key_id), ("address", request.client))

    # -- pages ---------------------------------------------------------------------------------

    def _page(
        self,
        status: int,
        template: str,
        visitor: _Visitor | None,
        *,
        title: str,
        error: str = "",
        **context: object,
    ) -> Response:
        approver = visitor.approver if visitor is not None else None
        body = render(
            template,
            title=title,
            error=error,
            base=VERIFICATION_PATH,
            stylesheet=self._stylesheet_url,
            approver=approver,
            session_csrf=session_token(visitor.session_id) if approver and visitor else "",
            **context,
        )
        response = Response(status, body)
        if visitor is not None and visitor.stale:
            response.with_header(*self._session_cookie("", 0))
        return response

    def _sign_in_form(
        self,
        request: Request,
        status: int,
        visitor: _Visitor,
        *,
        user_code: str = "",
        error: str = "",
    ) -> Response:
        token = request.cookies.get(CSRF_COOKIE, "")
        fresh = not looks_like_form_token(token)
        if fresh:
            token = mint_form_token()
        response = self._page(
            status,
            "sign_in.html",
            _Visitor(visitor.session_id, None),
            title="Approve a device login",
            error=error,
            csrf=token,
            user_code=user_code[:_MAX_SHOWN_CODE],
            minutes=_SESSION_SECONDS // 60,
        )
        if fresh:
            response.with_header(
                *set_cookie(CSRF_COOKIE, token, path=VERIFICATION_PATH, secure=self._secure)
            )
        return response

    def _code_form(
        self, status: int, visitor: _Visitor, *, user_code: str = "", error: str = ""
    ) -> Response:
        return self._page(
            status,
            "enter_code.html",
            visitor,
            title="Enter the code",
            error=error,
            user_code=user_code[:_MAX_SHOWN_CODE],
        )

    def _too_many(self, visitor: _Visitor, user_code: str, exc: ResourceExhausted) -> Response:
        seconds = max(1, math.ceil(exc.retry_after_seconds))
        error = f"Too many wrong codes. Wait {seconds} seconds, then try again."
        response = self._code_form(429, visitor, user_code=user_code, error=error)
        return response.with_header(b"retry-after", str(seconds).encode())

    def _confirmation(
        self, status: int, visitor: _Visitor, login: PendingAuthorization, *, error: str = ""
    ) -> Response:
        assert visitor.approver is not None
        held = visitor.approver.principal.scopes
        if login.requested_scopes:
            choices = [
                _ScopeChoice(value, scopes.grants(held, value))
                for value in sorted(login.requested_scopes)
            ]
        else:
            choices = [_ScopeChoice(value, True) for value in sorted(held)]
        now = self._logins.clock()
        return self._page(
            status,
            "confirm.html",
            visitor,
            title="Approve this device?",
            error=error,
            device=login.client_name or "an unnamed device",
            client_id=login.client_id,
            address=login.client_address,
            asked=when(login.create_time, now),
            expires=when(login.expire_time, now),
            user_code=format_user_code(login.user_code),
            choices=choices,
            own_scopes=not login.requested_scopes,
            any_grantable=any(choice.grantable for choice in choices),
        )

    def _message(
        self,
        status: int,
        title: str,
        lines: list[str],
        *,
        visitor: _Visitor | None = None,
        link: tuple[str, str] | None = None,
    ) -> Response:
        if link is None and visitor is not None and visitor.approver is not None:
            link = (VERIFICATION_PATH, "Enter another code")
        return self._page(status, "message.html", visitor, title=title, lines=lines, link=link)

    def _not_waiting(self, visitor: _Visitor) -> Response:
        return self._message(
            404,
            "This login is no longer waiting",
            ["It was already approved or denied, or its code expired. Nothing was changed."],
            visitor=visitor,
        )

    def _start_link(self) -> tuple[str, str]:
        return VERIFICATION_PATH, "Go to the device login page"

    def _code_link(self, user_code: str) -> tuple[str, str]:
        if not user_code:
            return self._start_link()
        query = urlencode({"user_code": user_code[:_MAX_SHOWN_CODE]})
        return f"{VERIFICATION_PATH}?{query}", "Back to the login"

    def _failure(self, exc: Exception) -> Response:
        status = status_for(exc)  # the API's one table says what is the database's fault
        if status is not None and status.code == code_pb2.UNAVAILABLE:
            response = self._message(
                503, "Try again in a moment", ["roz cannot reach its database right now."]
            )
            return response.with_header(b"retry-after", b"5")
        log.exception("device page failed")
        try:
            return self._message(
                500,
                "Something went wrong",
                ["The server could not show this page. Try again in a moment."],
            )
        except Exception:  # a broken template must not break the error page too
            log.exception("device page: the error page failed as well")
            return Response(500, b"Internal server error\n", b"text/plain; charset=utf-8")
