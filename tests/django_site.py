"""A Django project in one module, for the Django tests: settings, views, URLs and the WSGI
``application`` a real Gunicorn serves (``django_site:application``).

Importing it configures Django (unless something already did) with
``tidegate.django.TideGateMiddleware`` first in ``MIDDLEWARE`` and this module as
``ROOT_URLCONF``. ``settings.TIDEGATE`` holds :data:`GATE` (limit ``TIDEGATE_TEST_LIMIT``,
default 4), and, when ``TIDEGATE_TEST_STATE`` names a file, a maintenance switch following
that state file every 50 ms. In-process tests replace ``TIDEGATE`` with
``django.test.override_settings`` and build their ``Client`` inside it.

Every response leaving ``application`` carries the answering worker's pid in
``X-Worker-Pid``, tidegate's 503s included. Routes:

- ``/``: ``hello``; ``/work?ms=50`` holds for ``ms`` milliseconds, then ``done``.
- ``/stream?chunks=3&ms=0``: a ``StreamingHttpResponse`` of ``chunks`` chunks ``tick\\n``; it
  counts as inside the app until its stream is closed.
- ``/dependency``: a call through an open circuit breaker (``CircuitOpenError``).
- ``/boom``: raises :class:`Boom`.
- ``/status`` (``@exempt``), ``/gated-only`` (``@exempt(maintenance=False)``),
  ``/maintenance-only`` (``@exempt(gate=False)``), ``/class-view`` (a class-based view whose
  class is marked ``@exempt``), ``/dispatch-view`` (one whose ``dispatch`` is, through
  ``method_decorator``): each answers its own name.
- ``/_stats`` (exempt): JSON with the app's own counts (see ``gunicorn_apps.Meter``), the
  gate's counters and the worker's ``pid``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View
from gunicorn_apps import Meter, Stream, state_switch
from servers import STATS_PATH

from tidegate import CapacityGate, CircuitBreaker
from tidegate.django import exempt

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

LIMIT = int(os.environ.get("TIDEGATE_TEST_LIMIT", "4"))
#: The gate of the served project (the in-process tests bring their own).
GATE = CapacityGate(LIMIT)
#: Opened afresh before every call through it, so each dependency 503 says the same
#: Retry-After: a full reset_timeout.
DEPENDENCY_RESET_TIMEOUT = 600
dependency = CircuitBreaker(
    "django-db", failure_threshold=1, reset_timeout=DEPENDENCY_RESET_TIMEOUT
)
meter = Meter()


class Boom(Exception):
    """What ``/boom`` raises."""


def served_options() -> dict[str, Any]:
    """``settings.TIDEGATE`` as Gunicorn serves the project."""
    return {"gate": GATE, "maintenance": state_switch()}


if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-site-for-tidegate-tests",
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["tidegate.django.TideGateMiddleware"],
        INSTALLED_APPS=[],
        USE_TZ=True,
        TIDEGATE=served_options(),
    )
    django.setup()


def _number(request: HttpRequest, name: str, default: int) -> int:
    return int(request.GET.get(name, default))


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"hello", content_type="text/plain")


def work(request: HttpRequest) -> HttpResponse:
    meter.enter()
    try:
        time.sleep(_number(request, "ms", 50) / 1000)
        return HttpResponse(b"done", content_type="text/plain")
    finally:
        meter.leave()


def stream(request: HttpRequest) -> StreamingHttpResponse:
    meter.enter()
    body = Stream(_number(request, "chunks", 3), _number(request, "ms", 0) / 1000, meter=meter)
    return StreamingHttpResponse(body, content_type="text/plain")


def _unreachable() -> str:
    raise AssertionError("an open breaker ran the call")


def dependency_view(request: HttpRequest) -> HttpResponse:
    dependency.open()
    return HttpResponse(dependency.call(_unreachable))


def boom(request: HttpRequest) -> HttpResponse:
    raise Boom("the view failed")


@exempt
def status(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"status", content_type="text/plain")


@exempt(maintenance=False)
def gated_only(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"gated-only", content_type="text/plain")


@exempt(gate=False)
def maintenance_only(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"maintenance-only", content_type="text/plain")


@exempt
class ClassView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(b"class-view", content_type="text/plain")


@method_decorator(exempt, name="dispatch")
class DispatchView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(b"dispatch-view", content_type="text/plain")


@exempt
def stats(request: HttpRequest) -> JsonResponse:
    return JsonResponse(meter.report(GATE), headers={"Cache-Control": "no-store"})


urlpatterns = [
    path("", index),
    path("work", work),
    path("stream", stream),
    path("dependency", dependency_view),
    path("boom", boom),
    path("status", status),
    path("gated-only", gated_only),
    path("maintenance-only", maintenance_only),
    path("class-view", ClassView.as_view()),
    path("dispatch-view", DispatchView.as_view()),
    path(STATS_PATH.lstrip("/"), stats),
]


def _tag_with_pid(app: WSGIApplication) -> WSGIApplication:
    def tagged(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

        # The body goes back untouched, so the server still calls its close().
        return app(environ, start)

    return tagged


application = _tag_with_pid(get_wsgi_application())
