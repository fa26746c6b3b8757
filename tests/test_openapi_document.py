"""The OpenAPI document says what the server does (issue 15, D8): the statuses each operation answers with
the `{code, data, message}` shape, never 422; 405 with Allow; bodies the document admits are not refused
for reasons it does not state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from server_harness import RunningServer, running_server

from facecast import protocol as p


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("doc")) as running:
        yield running


@pytest.fixture(scope="module")
def document(server: RunningServer) -> dict[str, Any]:
    with server.client() as http:
        return http.get("/openapi.json").json()


def test_every_operation_lists_its_error_statuses_in_the_error_shape(document: dict[str, Any]) -> None:
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == error_ref
            if path.startswith("/v1/"):
                assert "400" in responses and "401" in responses, (method, path)
    assert document["paths"]["/v1/sessions/start"]["post"]["responses"].keys() >= {"409", "410", "429"}
    assert document["paths"]["/v1/avatars"]["post"]["responses"].keys() >= {"200", "201", "202", "413", "415"}
    assert document["components"]["schemas"]["Error"]["required"] == ["code", "data", "message"]
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_credentials_are_security_schemes_not_parameters(document: dict[str, Any]) -> None:
    token = document["paths"]["/v1/sessions/token"]["post"]
    assert token["security"] == [{"ApiKey": []}]
    assert document["paths"]["/v1/sessions/stop"]["post"]["security"] == [{"SessionToken": []}]
    names = [
        param["name"].lower()
        for op in document["paths"].values()
        for o in op.values()
        for param in o.get("parameters", [])
    ]
    assert "x-api-key" not in names and "authorization" not in names


def test_the_document_states_what_the_server_requires(
    server: RunningServer, document: dict[str, Any]
) -> None:
    """The three bodies the old document admitted and the server refused: each is now either outside the
    document or accepted."""
    key = server.store.create_key("doc")[1]
    avatars = document["paths"]["/v1/avatars"]["post"]["requestBody"]
    assert avatars["required"] is True  # no body, no Content-Type: the document says a body is needed
    token = jsonschema_rs.validator_for({**document, "$ref": "#/components/schemas/TokenRequest"})
    livekit_without_room = {"transport": "livekit", "livekit_config": None}
    assert token.is_valid({"transport": "webrtc"}) and not token.is_valid(livekit_without_room)
    with server.client() as http:
        for headers, body in [
            ({}, None),
            ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x--\r\n"),
        ]:
            r = http.post("/v1/avatars", headers={"X-API-KEY": key, **headers}, content=body)
            assert r.status_code in (400, 415), r.text
            assert r.json()["code"] == p.CODE_BAD_REQUEST and "image" in r.json()["message"]
        r = http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json=livekit_without_room)
        assert r.status_code == 400 and "livekit_config" in r.json()["message"]


def test_405_carries_allow_and_unknown_query_parameters_are_refused(server: RunningServer) -> None:
    key = server.store.create_key("allow")[1]
    with server.client() as http:
        put = http.put("/v1/sessions/token", headers={"X-API-KEY": key})
        assert put.status_code == 405 and put.headers["allow"] == "POST"
        assert put.json() == {"code": p.CODE_BAD_REQUEST, "data": None, "message": "Method Not Allowed"}
        patch = http.patch("/v1/avatars", headers={"X-API-KEY": key})
        assert patch.status_code == 405 and patch.headers["allow"] == "GET, POST"
        typo = http.get("/v1/sessions", params={"page-size": 5}, headers={"X-API-KEY": key})
        assert typo.status_code == 400 and "'page-size'" in typo.json()["message"]
        assert "page_size" in typo.json()["message"]
        big = http.get("/v1/sessions", params={"page": 2**63}, headers={"X-API-KEY": key})
        assert big.status_code == 400 and big.json()["code"] == p.CODE_BAD_REQUEST
        integral = http.post(
            "/v1/sessions/token", headers={"X-API-KEY": key}, json={"max_session_duration": 60.0}
        )
        assert integral.status_code == 200, integral.text
        wrong_type = http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json={"is_sandbox": 0})
        assert wrong_type.status_code == 400 and "is_sandbox" in wrong_type.json()["message"]
