"""The Django project of ``django_site`` served over ASGI: Django's ``get_asgi_application()``
wrapped in tidegate.asgi.TideGateMiddleware, as a real server imports it
(``django_asgi:application``).

Importing it configures Django first, the same project as ``django_site`` but with no Django
middleware (the ASGI middleware gates here, not ``tidegate.django``'s) and this module as
``ROOT_URLCONF``: async views for the routes of ``asgi_apps`` (``/work``, ``/stream``, ``/sse``,
``/_stats``, measured the same way), then every route of ``django_site``. Django serves no
websockets, and answers the lifespan scope with an error: the lifespan is served here. Import
it only in a server process: the in-process Django tests configure Django their own way.
"""

from __future__ import annotations

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-asgi-for-tidegate-tests",
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()

import django_site
from asgi_apps import (
    OPTIONS,
    STATS_PATH,
    Receive,
    Scope,
    Send,
    event,
    serve_lifespan,
    stats,
    tagged,
    tick,
    ticks,
    work,
)
from django.core.asgi import get_asgi_application
from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path

from tidegate.asgi import TideGateMiddleware


async def work_view(request: HttpRequest) -> HttpResponse:
    body = await work(int(request.GET.get("ms", 50)))
    return HttpResponse(body, content_type="text/plain")


async def stream_view(request: HttpRequest) -> StreamingHttpResponse:
    chunks = ticks(int(request.GET.get("chunks", 100)), int(request.GET.get("ms", 10)), tick)
    return StreamingHttpResponse(chunks, content_type="text/plain")


async def sse_view(request: HttpRequest) -> StreamingHttpResponse:
    chunks = ticks(int(request.GET.get("events", 100)), int(request.GET.get("ms", 10)), event)
    return StreamingHttpResponse(chunks, content_type="text/event-stream")


async def stats_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse(stats(), headers={"Cache-Control": "no-store"})


urlpatterns = [
    path("work", work_view),
    path("stream", stream_view),
    path("sse", sse_view),
    path(STATS_PATH.lstrip("/"), stats_view),
    *django_site.urlpatterns,
]

django_application = get_asgi_application()


async def project(scope: Scope, receive: Receive, send: Send) -> None:
    """Django's ASGI application, with the lifespan it does not serve."""
    if scope["type"] != "lifespan":
        await django_application(scope, receive, send)
        return
    await serve_lifespan(receive, send)


application = tagged(TideGateMiddleware(project, **OPTIONS))
