"""Errors in the OpenAI shape: through the SDK's typed exceptions, and over raw HTTP for what the SDK
cannot send (malformed JSON, wrong content type, oversized bodies, unknown paths)."""

from __future__ import annotations

import json

import openai
import pytest

from conftest import DEMO_KEY, MAX_BODY_MB, http

MESSAGES = [{"role": "user", "content": "hi"}]


def assert_openai_error(body: dict, *, type_: str, code, param=None) -> dict:
    """`{"error": {"message", "type", "param", "code"}}` and nothing else."""
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == type_
    assert error["code"] == code
    assert error["param"] == param
    return error


# ---- through the SDK


def test_wrong_key(gateway):
    client = gateway.client("sk-wrong-0000000000000000000000000000000000000000000")
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    err = info.value
    assert err.status_code == 401
    assert err.code == "invalid_api_key"
    assert err.type == "invalid_request_error"
    # the message may hint at the key, never repeat it
    assert "sk-wrong-0000000000000000000000000000000000000000000" not in err.message
    assert_openai_error(err.response.json(), type_="invalid_request_error", code="invalid_api_key")
    assert gateway.journal() == []


def test_wrong_key_on_every_kind_of_route(gateway):
    client = gateway.client("sk-wrong-0000000000000000000000000000000000000000000")
    for call in (
        lambda: client.models.list(),
        lambda: client.models.retrieve("gpt-4o-mini"),
        lambda: client.embeddings.create(model="text-embedding-3-small", input="x"),
        lambda: client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"RIFF", "audio/wav")),
    ):
        with pytest.raises(openai.AuthenticationError) as info:
            call()
        assert info.value.code == "invalid_api_key"
    assert gateway.journal() == []


def test_missing_key(gateway):
    result = http(
        "POST",
        f"{gateway.base}/v1/chat/completions",
        json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode(),
        {"Content-Type": "application/json"},
    )
    assert result.status == 401
    assert_openai_error(result.json(), type_="invalid_request_error", code="missing_api_key")


def test_unknown_model(gateway, client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9-ultra", messages=MESSAGES)
    err = info.value
    assert err.status_code == 404
    assert err.code == "model_not_found"
    assert err.param == "model"
    assert "gpt-9-ultra" in err.message
    assert gateway.journal() == []
    log = gateway.log(err.response.headers["x-uniapi-request-id"])
    assert (log["outcome"], log["status"], log["model"]) == ("rejected", 404, "gpt-9-ultra")


def test_missing_messages(gateway, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", cast_to=object, body={"model": "gpt-4o-mini"})
    err = info.value
    assert err.status_code == 400
    assert err.param == "messages"
    assert err.type == "invalid_request_error"
    assert "messages" in err.message
    assert gateway.journal() == []


def test_missing_model(gateway, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", cast_to=object, body={"messages": MESSAGES})
    assert info.value.param == "model"
    assert gateway.journal() == []


def test_upstream_validation_error_is_relayed(gateway, client):
    """A request the gateway lets through but the upstream rejects: the client gets the upstream's 400."""
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    err = info.value
    assert err.param == "messages"
    assert err.code == "empty_array"
    assert len(gateway.journal()) == 1


def test_upstream_validation_error_on_a_stream_request(gateway, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=[], stream=True)
    assert info.value.code == "empty_array"
    assert info.value.param == "messages"


def test_disabled_key(gateway, make_key):
    key = make_key()
    client = gateway.client(key["key"])
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices

    result = gateway.admin("PATCH", f"/keys/{key['id']}", {"enabled": False})
    assert result.status == 200, result.body
    assert result.json()["enabled"] is False

    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.status_code == 401
    assert info.value.code == "api_key_disabled"
    with pytest.raises(openai.AuthenticationError):
        client.models.list()

    # and back on
    assert gateway.admin("PATCH", f"/keys/{key['id']}", {"enabled": True}).status == 200
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices


def test_deleted_key(gateway, make_key):
    key = make_key()
    client = gateway.client(key["key"])
    assert [m.id for m in client.models.list()]
    assert gateway.admin("DELETE", f"/keys/{key['id']}").status == 204
    with pytest.raises(openai.AuthenticationError) as info:
        client.models.list()
    assert info.value.code == "invalid_api_key"


def test_expired_key(gateway, make_key):
    key = make_key(expires_at=1)  # 1970
    with pytest.raises(openai.AuthenticationError) as info:
        gateway.client(key["key"]).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.code == "api_key_expired"


def test_unknown_path_through_the_sdk(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.get("/no/such/endpoint", cast_to=object)
    assert info.value.status_code == 404
    assert info.value.code == "unknown_url"


# ---- raw HTTP


def auth_headers(content_type: str | None = "application/json") -> dict[str, str]:
    headers = {"Authorization": f"Bearer {DEMO_KEY}"}
    if content_type:
        headers["Content-Type"] = content_type
    return headers


def test_malformed_json(gateway):
    result = http(
        "POST",
        f"{gateway.base}/v1/chat/completions",
        b'{"model": "gpt-4o-mini", "messages": [',
        auth_headers(),
    )
    assert result.status == 400
    assert result.headers["content-type"].startswith("application/json")
    assert_openai_error(result.json(), type_="invalid_request_error", code="invalid_json")
    assert gateway.journal() == []


def test_body_that_is_not_an_object(gateway):
    result = http("POST", f"{gateway.base}/v1/embeddings", b"[1, 2, 3]", auth_headers())
    assert result.status == 400
    assert result.json()["error"]["type"] == "invalid_request_error"
    assert gateway.journal() == []


def test_wrong_content_type(gateway):
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode()
    result = http("POST", f"{gateway.base}/v1/chat/completions", body, auth_headers("text/plain"))
    assert result.status == 415
    assert_openai_error(result.json(), type_="invalid_request_error", code="unsupported_media_type")

    # and a JSON body on a multipart route
    result = http("POST", f"{gateway.base}/v1/audio/transcriptions", b'{"model":"whisper-1"}', auth_headers())
    assert result.status == 415
    assert result.json()["error"]["code"] == "unsupported_media_type"
    assert gateway.journal() == []


def test_body_over_the_limit(gateway):
    # the session gateway runs with UNIAPI_SERVER__MAX_BODY_MB=1 (conftest.py)
    filler = "x" * (MAX_BODY_MB * 1024 * 1024 + 1024)
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": filler}]}).encode()
    result = http("POST", f"{gateway.base}/v1/chat/completions", body, auth_headers())
    assert result.status == 413
    assert_openai_error(result.json(), type_="invalid_request_error", code="request_too_large")
    assert gateway.journal() == []


def test_chunked_body_over_the_limit(gateway):
    """Without a Content-Length the limit is enforced while reading."""
    filler = "z" * (MAX_BODY_MB * 1024 * 1024 + 1024)
    body = json.dumps({"model": "text-embedding-3-small", "input": filler}).encode()
    pieces = [body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024)]
    # an iterable body makes urllib send `Transfer-Encoding: chunked`
    result = http("POST", f"{gateway.base}/v1/embeddings", iter(pieces), auth_headers())
    assert result.status == 413
    assert result.json()["error"]["code"] == "request_too_large"
    assert gateway.journal() == []


def test_chunked_body_under_the_limit(gateway):
    body = json.dumps({"model": "text-embedding-3-small", "input": "chunked"}).encode()
    result = http("POST", f"{gateway.base}/v1/embeddings", iter([body[:10], body[10:]]), auth_headers())
    assert result.status == 200, result.body
    assert len(result.json()["data"]) == 1
    (call,) = gateway.journal()
    assert call["body_json"] == {"model": "text-embedding-3-small", "input": "chunked"}


def test_body_over_the_limit_through_the_sdk(gateway, client):
    filler = "y" * (MAX_BODY_MB * 1024 * 1024 + 1024)
    with pytest.raises(openai.APIStatusError) as info:
        client.embeddings.create(model="text-embedding-3-small", input=filler)
    assert info.value.status_code == 413
    assert info.value.code == "request_too_large"
    assert gateway.journal() == []


def test_unknown_path(gateway):
    for method, path in (("GET", "/v1/nope"), ("POST", "/v1/chat/completion"), ("GET", "/nothing-here")):
        result = http(method, f"{gateway.base}{path}", None, auth_headers(None))
        assert result.status == 404, (method, path)
        assert result.headers["content-type"].startswith("application/json")
        error = assert_openai_error(result.json(), type_="invalid_request_error", code="unknown_url")
        assert path in error["message"]
    assert gateway.journal() == []


def test_wrong_method(gateway):
    result = http("GET", f"{gateway.base}/v1/chat/completions", None, auth_headers(None))
    assert result.status == 405
    assert result.headers["content-type"].startswith("application/json")
    assert_openai_error(result.json(), type_="invalid_request_error", code="method_not_allowed")


def test_admin_api_needs_the_admin_key(gateway):
    result = http("GET", f"{gateway.base}/api/admin/users", None, {"Authorization": f"Bearer {DEMO_KEY}"})
    assert result.status == 401
    assert result.json()["error"]["code"] == "invalid_api_key"
    result = http("GET", f"{gateway.base}/api/admin/users")
    assert result.status == 401
