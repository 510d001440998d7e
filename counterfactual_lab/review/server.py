"""The review page: a small local web server (Starlette on uvicorn) for one reviewer and one run.

``cflab review RUN --reviewer NAME`` builds a :class:`ReviewSession` and calls :func:`serve`.
What it guarantees:

* **Only whoever has the printed address gets in.** Each start makes a one-time token; the
  address ``http://HOST:PORT/?token=…`` trades it for an HttpOnly, SameSite=Strict cookie and
  redirects to ``/review``, so the token leaves the address bar. Every other route needs that
  cookie, on loopback too (other users of the machine, and pages that rebind DNS, can reach
  127.0.0.1). After a restart the old cookie is refused and the page says to open the new address.
* **The judge does not anchor the reviewer.** The captions and the judge's verdict of a set are
  sent only once the reviewer has answered every counterfactual of it (``/api/reveal`` refuses
  before): the server enforces it, not the page.
* **Every answer is saved when it is given**, atomically (:class:`~counterfactual_lab.review.labels.LabelStore`);
  the page moves on only after the server said so. Killing the server loses nothing acknowledged.
* **Only the sample's images are served**, by a key the server made, never by a path from the request.
* Headers: a Content-Security-Policy that allows this server's own script, styles and images
  only, ``no-store``, ``nosniff``, no referrer, no framing.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import secrets
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from counterfactual_lab.errors import UserError
from counterfactual_lab.review.interchange import question
from counterfactual_lab.review.labels import (
    OTHER_CHANGE,
    TARGET_SHOWN,
    LabelStore,
    answer_problem,
)
from counterfactual_lab.review.sample import Sample
from counterfactual_lab.review.sets import JUDGE_SCORES, ReviewSet
from counterfactual_lab.storage.files import STORED_IMAGE_MAX_BYTES, read_bytes

STATIC_FILES = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
PAGE = "review.html"
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
RESTARTED = ("this page belongs to an earlier start of cflab review (or the address lacks its token): "
             "open the address cflab review printed last")
_IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif",
                "BMP": "image/bmp", "TIFF": "image/tiff"}


def static_text(name: str) -> str:
    """A file of the page (``review.html``, ``review.js``, ``review.css``), from the installed package."""
    return resources.files("counterfactual_lab.review").joinpath("static", name).read_text(encoding="utf-8")


@dataclass
class ReviewSession:
    """One reviewer on one run's sample: what the server shows and where the answers go."""

    run_id: str
    reviewer: str
    sample: Sample
    store: LabelStore
    storage_options: dict[str, Any] | None = None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # A cookie of its own per start: another server on this host, or an earlier start, never matches.
    cookie_name: str = field(default_factory=lambda: f"cflab_review_{secrets.token_hex(4)}")
    cookie_value: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def __post_init__(self) -> None:
        self.sets = {s.set_id: s for s in self.sample.sets}
        self.images: dict[str, str] = {}
        self._image_keys: dict[str, str] = {}
        for s in self.sample.sets:
            for uri in (s.original_uri, s.reconstruction_uri, s.control_uri, *(m.image_uri for m in s.members)):
                if uri and uri not in self._image_keys:
                    key = f"i{len(self.images)}"
                    self._image_keys[uri] = key
                    self.images[key] = uri

    def image_key(self, uri: str | None) -> str | None:
        return self._image_keys.get(uri) if uri else None

    def answers(self) -> dict[str, dict[str, dict[str, Any]]]:
        """This reviewer's saved answers on the sample: set → member → answer."""
        labels = self.store.read()
        mine = labels.filter(labels["reviewer"] == self.reviewer) if labels.height else labels
        found: dict[str, dict[str, dict[str, Any]]] = {}
        for row in mine.iter_rows(named=True):
            s = self.sets.get(row["set_id"])
            if s is not None and any(m.member == row["member"] for m in s.members):
                found.setdefault(row["set_id"], {})[row["member"]] = {
                    "target_shown": row["target_shown"], "other_change": row["other_change"], "note": row["note"] or ""}
        return found

    def complete(self, set_id: str, answers: dict[str, dict[str, dict[str, Any]]]) -> bool:
        return {m.member for m in self.sets[set_id].members} <= set(answers.get(set_id, {}))

    def state(self) -> dict[str, Any]:
        """What the page starts from: the sample (no captions, no verdicts), the answers, where to resume."""
        answers = self.answers()
        order = self.sample.set_ids
        first_open = next((i for i, set_id in enumerate(order) if not self.complete(set_id, answers)), len(order))
        return {
            "run_id": self.run_id, "reviewer": self.reviewer, "seed": self.sample.seed,
            "vocabulary": {"target_shown": list(TARGET_SHOWN), "other_change": list(OTHER_CHANGE)},
            "sets": [self._public(s) for s in self.sample.sets],
            "answers": answers, "resume_at": min(first_open, max(0, len(order) - 1)),
            "done": sum(self.complete(set_id, answers) for set_id in order),
        }

    def _public(self, s: ReviewSet) -> dict[str, Any]:
        references = [{"role": role, "img": self.image_key(uri)} for role, uri in
                      (("reconstruction", s.reconstruction_uri), ("original", s.original_uri), ("control", s.control_uri))
                      if uri]
        return {"set_id": s.set_id, "attribute": s.attribute, "source_value": s.source_value, "references": references,
                "members": [{"member": m.member, "target_value": m.target_value, "img": self.image_key(m.image_uri),
                             "question": question(s.attribute, m.target_value)} for m in s.members]}

    def reveal(self, set_id: str) -> dict[str, Any]:
        """The captions and the judge's view of an answered set."""
        s = self.sets[set_id]
        return {"set_id": set_id, "original_caption": s.original_caption,
                "members": [{"member": m.member, "caption": m.caption, "judge_kept": m.judge_kept,
                             "judge_pass": m.judge_pass, "drop_reason": m.drop_reason,
                             "scores": {k: m.scores.get(k) for k in JUDGE_SCORES}} for m in s.members]}


def build_app(session: ReviewSession, allowed_hosts: list[str] | None = None) -> Starlette:
    """The review page's web app for ``session`` (routes and guarantees: module docstring)."""

    def authorised(request: Request) -> bool:
        return secrets.compare_digest(request.cookies.get(session.cookie_name, ""), session.cookie_value)

    def refused(request: Request) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": RESTARTED}, status_code=403)
        return PlainTextResponse(RESTARTED, status_code=403)

    def enter(request: Request) -> Response:
        if secrets.compare_digest(request.query_params.get("token", ""), session.token):
            response = RedirectResponse("/review", status_code=303)
            response.set_cookie(session.cookie_name, session.cookie_value, httponly=True, samesite="strict", path="/")
            return response
        if authorised(request):
            return RedirectResponse("/review", status_code=303)
        return refused(request)

    def page(request: Request) -> Response:
        if not authorised(request):
            return refused(request)
        return Response(static_text(PAGE), media_type="text/html; charset=utf-8")

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return PlainTextResponse("not found", status_code=404)
        if not authorised(request):
            return refused(request)
        return Response(static_text(name), media_type=STATIC_FILES[name])

    def state(request: Request) -> Response:
        if not authorised(request):
            return refused(request)
        return JSONResponse(session.state())

    def reveal(request: Request) -> Response:
        if not authorised(request):
            return refused(request)
        set_id = request.path_params["set_id"]
        if set_id not in session.sets:
            return JSONResponse({"error": f"no set {set_id!r} in the sample"}, status_code=404)
        if not session.complete(set_id, session.answers()):
            return JSONResponse({"error": "answer every counterfactual of the set first"}, status_code=409)
        return JSONResponse(session.reveal(set_id))

    async def label(request: Request) -> Response:
        if not authorised(request):
            return refused(request)
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        set_id, member = body.get("set_id"), body.get("member")
        s = session.sets.get(set_id) if isinstance(set_id, str) else None
        if s is None or not any(m.member == member for m in s.members):
            return JSONResponse({"error": f"no counterfactual {member!r} of set {set_id!r} in the sample"}, status_code=404)
        note = body.get("note") or None
        problem = answer_problem(body.get("target_shown"), body.get("other_change"), note)
        if problem:
            return JSONResponse({"error": problem}, status_code=422)
        await asyncio.to_thread(session.store.answer, session.reviewer, set_id, member, body["target_shown"],
                                body["other_change"], note, session.sample.seed)
        answers = session.answers()
        return JSONResponse({"saved": True, "complete": session.complete(set_id, answers),
                             "done": sum(session.complete(i, answers) for i in session.sample.set_ids)})

    async def undo(request: Request) -> Response:
        if not authorised(request):
            return refused(request)
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        latest = await asyncio.to_thread(session.store.take_back_latest, session.reviewer)
        answers = session.answers()
        taken = None if latest is None else {"set_id": latest["set_id"], "member": latest["member"]}
        return JSONResponse({"undone": taken, "done": sum(session.complete(i, answers) for i in session.sample.set_ids)})

    def image(request: Request) -> Response:
        if not authorised(request):
            return refused(request)
        uri = session.images.get(request.path_params["key"])
        if uri is None:
            return PlainTextResponse("not found", status_code=404)
        data = read_bytes(uri, session.storage_options, max_bytes=STORED_IMAGE_MAX_BYTES, what="a stored image")
        kind = _image_type(data)
        if kind is None:
            return PlainTextResponse("not an image", status_code=415)
        return Response(data, media_type=kind)

    def favicon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/", enter), Route("/review", page), Route("/static/{name}", static), Route("/api/state", state),
        Route("/api/reveal/{set_id}", reveal), Route("/api/label", label, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]), Route("/img/{key}", image), Route("/favicon.ico", favicon),
    ]
    middleware = [Middleware(SecurityHeaders),
                  Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["127.0.0.1", "localhost"])]
    return Starlette(routes=routes, middleware=middleware)


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every response, refusals included."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, with_headers)


async def _json_body(request: Request) -> dict[str, Any] | Response:
    """The request's JSON object, or the response refusing it. Only ``application/json`` is taken:
    a form on another site cannot send it without the browser asking this server first."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return JSONResponse({"error": "send application/json"}, status_code=415)
    try:
        body = json.loads(await request.body())
    except ValueError:
        return JSONResponse({"error": "the body is not JSON"}, status_code=400)
    return body if isinstance(body, dict) else JSONResponse({"error": "send a JSON object"}, status_code=400)


def _image_type(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _IMAGE_TYPES.get(img.format or "")
    except Exception:  # noqa: BLE001 - anything Pillow cannot open is not served
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(host: str) -> list[str]:
    """The Host headers the server answers: the loopback names, or anything when bound to every interface."""
    if host in ("0.0.0.0", "::"):
        return ["*"]
    return sorted({host, "127.0.0.1", "localhost"})


def serve(session: ReviewSession, listening: socket.socket, on_ready: Callable[[str], None]) -> None:
    """Serve the page on ``listening`` (:func:`listen`) until Ctrl-C or SIGTERM; ``on_ready(address)``
    once it answers (the address names the port, also one the system picked). Returns when stopped."""
    host, port = listening.getsockname()[:2]
    app = build_app(session, allowed_hosts_for(host))
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           lifespan="off"))

    def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            threading.Event().wait(0.02)
        bound = server.servers[0].sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        on_ready(f"http://{shown}:{bound}/?token={session.token}")

    watcher = threading.Thread(target=announce, name="cflab-review-ready", daemon=True)
    watcher.start()
    # uvicorn stops cleanly on SIGINT and SIGTERM, then raises the signal again: both end here as
    # KeyboardInterrupt, so the caller can say where the answers are and exit 0.
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        server.run(sockets=[listening])
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def listen(host: str, port: int) -> socket.socket:
    """The page's listening socket (``port`` 0: any free one), or a one-line error naming the address,
    before anything is written (uvicorn itself would exit 1 with a log line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); another "
                        "cflab review may hold the port: pick another with --port, or --port 0 for any free one") from None
    listening.listen(128)
    listening.set_inheritable(True)
    return listening


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
