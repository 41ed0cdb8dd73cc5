"""The refusals of the connection gate and the body readers are in the OpenAPI description of
every operation that can answer them (issue 12's 408, 415 and 501 for codings, 503
`too_many_connections` and `server_busy` were not): each is provoked on a real `instapay serve`
and looked up in the spec of the operation that answered it."""

import re
import socket
from pathlib import Path

from attack import connect, head, read_response, request, serve_limited, signature
from instapay.http.openapi import SPEC
from servers import free_port

# A value for every path parameter: the codings are refused before any handler looks at it.
PATH_PARAMETER = re.compile(r"\{[a-z_]+\}")


def operations() -> list[tuple[str, str, str]]:
    """Every operation of the spec: method, template, and a path that reaches it."""
    return [
        (method.upper(), template, PATH_PARAMETER.sub("x1", template))
        for template, item in SPEC["paths"].items()
        for method in item
    ]


def documented(method: str, template: str, status: int, code: str) -> bool:
    """True if the operation lists `status`, and its description names `code`."""
    response = SPEC["paths"][template][method.lower()]["responses"].get(str(status))
    if response is None:
        return False
    if "$ref" in response:
        response = SPEC["components"]["responses"][response["$ref"].rpartition("/")[2]]
    return f"`{code}`" in response["description"]


def test_codings_refused_on_every_operation_are_documented_there(tmp_path: Path) -> None:
    port = free_port()
    server = serve_limited(tmp_path, port)
    refusals = [
        ({"Content-Encoding": "gzip", "Content-Length": "2"}, b"{}", 415),
        ({"Transfer-Encoding": "gzip, chunked"}, b"0\r\n\r\n", 501),
    ]
    undocumented = []
    for method, template, path in operations():
        for headers, body, status in refusals:
            answered, answer = request(port, head(method, path, headers) + body)
            code = answer["error"]["code"]  # type: ignore[index]
            assert answered == status, f"{method} {path} {headers}: {answered} {answer}"
            if not documented(method, template, status, code):
                undocumented.append(f"{method} {template} {status} {code}")
    assert not undocumented
    assert server.stop()[0] == 0


def test_a_body_timeout_on_a_signed_read_is_documented(tmp_path: Path) -> None:
    port = free_port()
    server = serve_limited(tmp_path, port, body_read_timeout_s=1.0)
    headers = {"Content-Length": "10", "Instapay-Signature": signature("/v1/events")}
    with connect(port) as sock:
        sock.sendall(head("GET", "/v1/events", headers) + b"{")
        status, _, body = read_response(sock)
    assert (status, b'"body_timeout"' in body) == (408, True)
    assert documented("GET", "/v1/events", 408, "body_timeout")
    assert server.stop()[0] == 0


def test_the_connection_cap_refusal_is_documented_on_routes_without_the_engine(
    tmp_path: Path,
) -> None:
    port = free_port()
    server = serve_limited(tmp_path, port, peer_connections_max=1)
    with connect(port) as held:
        status, body = request(port, head("GET", "/healthz", {}))
        held.shutdown(socket.SHUT_WR)
    assert (status, body["error"]["code"]) == (503, "too_many_connections")  # type: ignore[index]
    for method, template, _ in operations():
        assert documented(method, template, 503, "too_many_connections"), (method, template)
    assert server.stop()[0] == 0


def test_a_busy_body_budget_is_documented_where_bodies_are_read() -> None:
    for method, template in [("POST", "/v1/payments"), ("POST", "/v1/admin/accounts")]:
        assert documented(method, template, 503, "server_busy"), (method, template)
