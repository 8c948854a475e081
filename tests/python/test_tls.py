"""Upstreams over HTTPS: the relay's client speaks TLS, checks the certificate against the trust store,
and never sends the channel key to an upstream it cannot verify.

The trust store is the platform's; `SSL_CERT_FILE` points it at a test CA (trustme) for the gateway
started here, so nothing on the machine changes.
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import openai
import pytest
import trustme

from conftest import Gateway, running_gateway

UPSTREAM_KEY = "sk-tls-upstream-key-0123456789"
MODEL = "tls-model"


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append({"path": self.path, "authorization": self.headers.get("Authorization"), "body": json.loads(body)})
        answer = json.dumps({
            "id": "chatcmpl-tls",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "over TLS"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def _https_upstream(ca: trustme.CA) -> tuple[ThreadingHTTPServer, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (_Upstream,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.fixture(scope="module")
def trusted_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_gateway(trusted_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    ca_file = tmp_path_factory.mktemp("tls") / "ca.pem"
    trusted_ca.cert_pem.write_to_path(str(ca_file))
    with running_gateway({"SSL_CERT_FILE": str(ca_file)}) as gw:
        assert gw.admin("PUT", f"/prices/{MODEL}", {"input_per_mtok": 1.0, "output_per_mtok": 2.0}).status == 200
        yield gw


def _channel(gw: Gateway, name: str, port: int) -> None:
    body = {"name": name, "kind": "openai", "base_url": f"https://127.0.0.1:{port}", "keys": [UPSTREAM_KEY], "models": [MODEL]}
    result = gw.admin("POST", "/channels", body)
    assert result.status == 201, result.body


def test_a_verified_https_upstream_gets_the_request_and_the_client_its_answer(tls_gateway, trusted_ca):
    server, seen = _https_upstream(trusted_ca)
    try:
        _channel(tls_gateway, "tls-trusted", server.server_address[1])
        before = tls_gateway.balance_nano()
        completion = tls_gateway.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello over TLS"}]
        )
        assert completion.choices[0].message.content == "over TLS"
        assert completion.usage.total_tokens == 9
        (call,) = seen
        assert call["path"] == "/v1/chat/completions"
        assert call["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert call["body"] == {"model": MODEL, "messages": [{"role": "user", "content": "hello over TLS"}]}
        # 7 input tokens at 1 USD/Mtok and 2 output tokens at 2 USD/Mtok
        assert before - tls_gateway.balance_nano() == 7 * 1_000 + 2 * 2_000
        tls_gateway.ledger_reconciles()
    finally:
        server.shutdown()
        tls_gateway.admin("DELETE", f"/channels/{tls_gateway.channel_id('tls-trusted')}")


def test_an_upstream_whose_certificate_is_not_trusted_never_sees_the_key(tls_gateway):
    stranger = trustme.CA()  # not in the gateway's trust store
    server, seen = _https_upstream(stranger)
    try:
        _channel(tls_gateway, "tls-untrusted", server.server_address[1])
        before = tls_gateway.balance_nano()
        with pytest.raises(openai.APIStatusError) as raised:
            tls_gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert raised.value.status_code == 502
        assert raised.value.body["code"] == "upstream_unavailable"
        assert seen == [], "the request must not be sent over an unverified connection"
        log = tls_gateway.log(raised.value.response.headers["x-uniapi-request-id"])
        assert log["attempts"][0]["error"] == "connection to the upstream failed"
        assert UPSTREAM_KEY not in tls_gateway.output()
        assert tls_gateway.balance_nano() == before
    finally:
        server.shutdown()
        tls_gateway.admin("DELETE", f"/channels/{tls_gateway.channel_id('tls-untrusted')}")
