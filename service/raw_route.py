"""A FastAPI route that hands its endpoint the request and nothing else.

For the hottest routes (``/predict-rating``, ``/rank``): their endpoints take ``request:
Request``, read the body and header themselves (service/json_body.py) and return a
``Response``. FastAPI's own handler would still solve the (empty) parameter list, look up
its telemetry and wrap the call on every request; :class:`RequestRoute` calls the endpoint
directly. Everything else stays FastAPI's: the path matching, the app's exception handlers and
middleware, and the OpenAPI entry (built from the route's declaration and ``openapi_extra``).
FastAPI documents overriding ``APIRoute.get_route_handler`` for custom request handling.

Dependencies are not run: a router holding such routes must be included without
``dependencies=`` (authentication of these routes belongs in a middleware or the endpoint).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.routing import APIRoute


class RequestRoute(APIRoute):
    """An :class:`APIRoute` whose endpoint is ``async def endpoint(request) -> Response``.

    Raises:
        TypeError: at declaration, for an endpoint with other parameters (FastAPI would not
            fill them in).
    """

    def __init__(self, path: str, endpoint: Callable[..., Awaitable[Response]], **kwargs):
        super().__init__(path, endpoint, **kwargs)
        names = list(inspect.signature(endpoint).parameters)
        if names != [self.dependant.request_param_name] or self.dependencies:
            raise TypeError(
                f"{path}: a RequestRoute endpoint takes only the request and has no "
                f"dependencies; {endpoint.__name__}{inspect.signature(endpoint)} does not"
            )

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        return self.endpoint
