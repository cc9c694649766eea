"""The Flask application factory: ``gunicorn 'web:create_app()'``.

It wires settings, the per-process services, the blueprints, the OpenAPI document
(``/openapi.json``, interactive docs at ``/docs``) and the problem+json error mapping.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import IO, Any

from flask import Request, Response, redirect, request
from flask.globals import request_ctx
from flask.json.provider import DefaultJSONProvider
from flask_openapi3 import Info, OpenAPI
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property

from models.canonical import strict_json_loads
from models.settings import Settings, load_settings, warn_of_unknown_variables
from web.api.api_keys import api_keys_api
from web.api.audit import audit_api
from web.api.diagnostics import diagnostics_api
from web.api.jobs import jobs_api
from web.api.registry import registry_api
from web.api.work import work_api
from web.auth import PROTECTED_PREFIX, SECURITY_SCHEMES, init_auth
from web.content_negotiation import document_not_acceptable, refusing_unacceptable_answers
from web.request_encoding import document_unsupported_bodies, refuse_targets_not_utf8, refusing_bodies_not_utf8
from web.docs_policy import init_docs_policy
from web.health import health_api
from web.idempotency_http import refusing_unhonoured_idempotency_keys
from web.metrics import init_observability
from web.openapi_headers import document_headers, operations_where
from web.problems import invalid_input_response, register_error_handlers, validation_problem
from web.services import init_services
from web.sibling_routes import install_default_converter, methods_matching, refuse_static_sibling_names

API_VERSION = "0.1.0"


class StrictJSONProvider(DefaultJSONProvider):
    """JSON in and out without NaN or Infinity (not JSON, and PostgreSQL refuses them).

    Bodies are read with :func:`models.canonical.strict_json_loads`: a repeated member
    name (which value did the client mean?) and nesting too deep for the parser are
    malformed JSON too, a 422 like any other body that is not JSON, never a 500.
    """

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        # Bytes are UTF-8 (RFC 8259), not whatever json.loads detects: UTF-16 bytes without a
        # byte order mark were read as UTF-16 (web.request_encoding refuses them first, 415).
        return strict_json_loads(s.decode("utf-8-sig") if isinstance(s, bytes | bytearray) else s)


class PlantOpenAPI(OpenAPI):
    """The app class: an ``OPTIONS`` Flask answers itself is ``204 No Content`` with ``Allow``.

    Flask's own answer was ``200 text/html`` with an empty body, the one answer under ``/api/``
    that was neither JSON nor a problem. CORS is closed (README), so this is no preflight
    answer: no ``Access-Control-*`` header is sent, and the request needs a key as a GET does."""

    def make_default_options_response(self) -> Response:
        allow = super().make_default_options_response().headers["Allow"].split(", ")
        response = Response(status=204)
        del response.headers["Content-Type"]
        response.headers["Allow"] = ", ".join(methods_matching(request_ctx.url_adapter, allow))
        return response


class BoundedBodyRequest(Request):
    """A request whose body without ``Content-Length`` (``Transfer-Encoding: chunked``, which
    gunicorn hands on with ``wsgi.input_terminated``) is 413 past ``MAX_CONTENT_LENGTH`` too.

    werkzeug reads such a body up to the limit and stops there without a word, so a body too
    large arrived cut off at 1 MiB: a 422 "not valid JSON" for a valid document, or, for one
    that ended in whitespace, a 2xx for a body the server promises to refuse. It is read
    here, lazily (after the key check, as a body with ``Content-Length`` is), up to one byte
    past the limit."""

    @cached_property
    def stream(self) -> IO[bytes]:
        limit = self.max_content_length
        if self.content_length is not None or limit is None or not self.environ.get("wsgi.input_terminated"):
            return super().stream
        body = self.environ["wsgi.input"].read(limit + 1)
        if len(body) > limit:
            raise RequestEntityTooLarge()
        return io.BytesIO(body)


API_DESCRIPTION = (
    "Governed agent-manufacturing platform API. `Idempotency-Key` is honoured by the operations that name it "
    "(job submissions and registry creates); any other operation that changes something refuses it, 422 "
    "`invalid-input` naming the header, rather than ignore it.")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # the methods whose bodies routes read


def refuse_string_bodies() -> Response | None:
    """``before_request``: a JSON body that is a string is 422.

    flask-openapi3 reads such a body as the JSON text inside the string
    (``model_validate_json``), past :class:`StrictJSONProvider`, so a repeated member name
    in it would be taken silently. Every body Plant accepts is a JSON object."""
    if request.method in BODY_METHODS and request.is_json and isinstance(request.get_json(silent=True), str):
        return invalid_input_response("the request body must be a JSON object, not a string",
                                      [{"field": "body", "message": "Input should be a JSON object"}])
    return None


def refuse_repeated_query_parameters() -> Response | None:
    """``before_request``: a query parameter given twice under ``/api/`` is 422 naming it.

    flask-openapi3 hands a query model the first value of a repeated parameter and drops
    the rest, so ``?status=queued&status=running`` listed only the queued jobs, as if the
    filter had been one value: which did the client mean? (a repeated JSON member is refused
    the same way). No query model takes a list. A request no route takes (a path or a method
    none has) is left to its 404 or 405: its query is not what is wrong with it."""
    if not request.path.startswith(PROTECTED_PREFIX) or request.routing_exception is not None:
        return None
    repeated = [name for name, values in request.args.lists() if len(values) > 1]
    if not repeated:
        return None
    return invalid_input_response(
        "a query parameter may be given once: " + ", ".join(repeated),
        [{"field": name, "message": "given more than once; send it once"} for name in repeated])


def refusing_query_parameters_not_taken(app: OpenAPI) -> Callable[[], Response | None]:
    """A ``before_request`` hook: a query parameter sent under ``/api/`` to an operation that
    takes none is 422 naming it. An operation with query parameters refuses one it does not
    name through its query model (``web.schemas.QueryModel``); one without a query model read
    none and ignored them all, so ``POST /audit/run?verify_signatures=all`` with a body of
    ``{}`` ran an audit of the heads alone, and ``PATCH …?description=x`` answered 200 having
    changed nothing it was sent. The operations taking none are those /openapi.json gives no
    query parameter (a HEAD is its GET), read once here."""
    takes_none = operations_where(app, lambda operation: not any(p.get("in") == "query"
                                                                 for p in operation.get("parameters", [])))

    def refuse() -> Response | None:
        if not request.path.startswith(PROTECTED_PREFIX) or not request.args or \
                (request.endpoint, request.method) not in takes_none:
            return None
        names = sorted(request.args)
        return invalid_input_response(
            f"{request.method} {request.path} takes no query parameters: " + ", ".join(names),
            [{"field": name, "message": "not a parameter of this operation"} for name in names])

    return refuse


def refusing_bodies_not_json(app: OpenAPI) -> Callable[[], Response | None]:
    """A ``before_request`` hook: a body sent as another media type than JSON, to an operation
    that reads one, is 422 naming ``Content-Type``. flask-openapi3 reads such a body as none,
    and the refusal named the body's model (``Input should be a valid dictionary``) for a valid
    JSON object sent as ``text/plain`` or as curl's default form. The operations reading a body
    are those /openapi.json gives a ``requestBody``, read once here."""
    reads_a_body = operations_where(app, lambda operation: "requestBody" in operation)

    def refuse() -> Response | None:
        if (request.endpoint, request.method) in reads_a_body and not request.is_json and _has_a_body():
            return invalid_input_response(
                f"the request body must be JSON (Content-Type: application/json), not {request.mimetype or 'none'}",
                [{"field": "Content-Type", "message": "send the body as application/json"}])
        return None

    return refuse


def _has_a_body() -> bool:
    """Whether the request sent a body: one with ``Content-Length``, or a chunked one (no
    length) that holds a byte, read (and kept for the view) to know."""
    if request.content_length is not None:
        return request.content_length > 0
    return bool(request.get_data(cache=True))


def forbid_sniffing(response: Response) -> Response:
    """``after_request``: every answer is read as the media type it says, never sniffed.
    JSON, a problem and a CSV export echo what clients wrote (names, a digest's ``kid``, a
    finding's detail); a browser or a proxy's viewer that sniffed one as HTML would run
    what it holds. (The report page says it too, with its CSP: web.report_html.)"""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def create_app(settings: Settings | None = None) -> OpenAPI:
    settings = settings or load_settings()
    app = PlantOpenAPI(
        __name__,
        info=Info(title="Plant", version=API_VERSION, description=API_DESCRIPTION),
        security_schemes=SECURITY_SCHEMES,
        doc_prefix="",
        doc_url="/openapi.json",
        validation_error_status=422,
        validation_error_callback=validation_problem,
    )
    app.json = StrictJSONProvider(app)
    app.request_class = BoundedBodyRequest
    # A doubled slash (/api/v1//api-keys) is no route: 404 problem+json, not werkzeug's HTML
    # 308 to the path with one slash, which the scope check had already judged as another path.
    app.url_map.merge_slashes = False
    install_default_converter(app)  # before any rule: /agents/assign-teams is not also /agents/<entity_id>
    init_services(app, settings)
    register_error_handlers(app)
    init_observability(app, settings)  # before auth: a 401 still gets a request id and is counted
    warn_of_unknown_variables()  # once logging is set up
    init_auth(app)
    app.after_request(forbid_sniffing)
    app.before_request(refuse_string_bodies)  # after auth: a request without a key is 401 whatever its body
    app.before_request(refuse_targets_not_utf8)  # after auth, as above; before any hook reads the query
    app.before_request(refuse_repeated_query_parameters)  # after auth, as above
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    for blueprint in (health_api, jobs_api, diagnostics_api, registry_api, work_api, audit_api, api_keys_api):
        app.register_api(blueprint)
    app.add_url_rule("/docs", "docs", lambda: redirect("/swagger"))
    refuse_static_sibling_names(app)
    # Swagger UI's default validatorUrl makes every browser that opens /docs on a host other than
    # localhost fetch validator.swagger.io with this deployment's /openapi.json URL (which that
    # service then fetches): the docs page would call out to a third party. "none" turns it off.
    app.config["SWAGGER_CONFIG"] = {"validatorUrl": "none"}
    init_docs_policy(app)  # after the config the pages are rendered with: it hashes their scripts
    document_unsupported_bodies(app)  # the document is built here, once, and served as built
    document_not_acceptable(app)
    document_headers(app)  # after every response is in it: each gets X-Request-ID
    app.before_request(refusing_query_parameters_not_taken(app))  # after auth, as above
    app.before_request(refusing_bodies_not_json(app))  # after auth, as above
    app.before_request(refusing_bodies_not_utf8(app))  # after the media type's check: a text/plain body is 422
    app.before_request(refusing_unhonoured_idempotency_keys(app))  # after auth, as above
    app.before_request(refusing_unacceptable_answers(app))  # after auth, as above; before any operation runs
    return app
