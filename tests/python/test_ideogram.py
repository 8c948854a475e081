"""Ideogram through the real binary (`serve --demo`): synchronous, charged per image asked for,
upstream refusals uncharged with their message, bad input never sent, `Api-Key` or Bearer from the
client and `Api-Key` upstream, multipart forwarded as sent."""

from __future__ import annotations

import json
import uuid
from typing import Any, Optional

from conftest import http, http_json, make_png

PRICE_GENERATE = 40_000_000  # per image
PRICE_TURBO = 25_000_000  # ideogram_generate:V_2_TURBO, per image
PRICE_REMIX = 40_000_000
PRICE_DESCRIBE = 10_000_000  # per call
SANDBOX_KEY = "sk-sandbox-demo-upstream"


def generate(gateway, request: Any, headers: Optional[dict[str, str]] = None):
    auth = headers if headers is not None else {"Api-Key": gateway.demo_key}
    return http_json("POST", f"{gateway.base}/ideogram/generate", {"image_request": request}, auth)


def form(gateway, op: str, parts: list[tuple[str, Optional[str], bytes]]):
    boundary = uuid.uuid4().hex
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            body += b"Content-Type: image/png\r\n"
        body += b"\r\n" + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {"Api-Key": gateway.demo_key, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    return http("POST", f"{gateway.base}/ideogram/{op}", body, headers)


def test_generate_is_charged_per_image_with_api_key_upstream(gateway):
    before = gateway.balance_nano()
    answer = generate(gateway, {"prompt": "a lighthouse", "num_images": 2, "aspect_ratio": "ASPECT_16_9"})
    assert answer.status == 200, answer.body
    data = answer.json()["data"]
    assert len(data) == 2 and data[0]["resolution"] == "1312x736" and data[0]["is_image_safe"] is True
    assert before - gateway.balance_nano() == 2 * PRICE_GENERATE
    turbo = generate(gateway, {"prompt": "fast", "model": "V_2_TURBO"})
    assert turbo.status == 200
    assert before - gateway.balance_nano() == 2 * PRICE_GENERATE + PRICE_TURBO
    calls = [r for r in gateway.journal() if r["path"] == "/ideogram/generate"]
    assert len(calls) == 2
    assert all(r["headers"]["api-key"] == SANDBOX_KEY and r["authorization"] is None for r in calls)
    assert calls[0]["body_json"]["image_request"]["num_images"] == 2
    gateway.ledger_reconciles()


def test_a_safety_refusal_is_passed_through_uncharged(gateway):
    before = gateway.balance_nano()
    answer = generate(gateway, {"prompt": "please reject this"})
    assert answer.status == 422, answer.body
    assert answer.json()["error"]["message"] == "Prompt failed safety check"
    assert gateway.balance_nano() == before
    gateway.ledger_reconciles()


def test_bad_input_costs_nothing_and_reaches_no_upstream(gateway):
    before = gateway.balance_nano()
    for request in [{}, {"prompt": "x", "num_images": 20}]:
        answer = generate(gateway, request)
        assert answer.status == 400 and answer.json()["error"]["message"], answer.body
    text = b"not an image at all"
    for op, parts in [
        ("remix", [("image_request", None, b'{"prompt":"x"}'), ("image_file", "a.png", text)]),
        ("upscale", [("image_request", None, b"{}")]),
        ("describe", [("image_file", "a.png", text)]),
    ]:
        answer = form(gateway, op, parts)
        assert answer.status == 400, (op, answer.body)
        assert "error" in answer.json()
    assert not [r for r in gateway.journal() if r["path"].startswith("/ideogram/")]
    assert gateway.balance_nano() == before


def test_multipart_operations_are_forwarded_as_sent(gateway):
    before = gateway.balance_nano()
    png = make_png(4, 4)
    request = json.dumps({"prompt": "make it blue", "image_weight": 40})
    remix = form(gateway, "remix", [("image_request", None, request.encode()), ("image_file", "in.png", png)])
    assert remix.status == 200, remix.body
    assert len(remix.json()["data"]) == 1
    describe = form(gateway, "describe", [("image_file", "in.png", png)])
    assert describe.status == 200, describe.body
    assert describe.json()["descriptions"][0]["text"]
    assert before - gateway.balance_nano() == PRICE_REMIX + PRICE_DESCRIBE
    sent = [r for r in gateway.journal() if r["path"] == "/ideogram/remix"][0]
    assert sent["multipart_fields"] == {"image_request": request, "image_file": f"<file in.png, {len(png)} bytes>"}
    assert sent["headers"]["api-key"] == SANDBOX_KEY
    gateway.ledger_reconciles()


def test_clients_may_use_api_key_or_bearer(gateway):
    assert generate(gateway, {"prompt": "x"}, {"Authorization": f"Bearer {gateway.demo_key}"}).status == 200
    missing = generate(gateway, {"prompt": "x"}, {})
    assert missing.status == 401 and missing.json()["error"]["message"]
    wrong = generate(gateway, {"prompt": "x"}, {"Api-Key": "sk-" + "0" * 48})
    assert wrong.status == 401


def test_the_channel_test_accepts_the_key(gateway):
    result = gateway.admin("POST", f"/channels/{gateway.channel_id('sandbox-ideogram')}/test")
    assert result.status == 200, result.body
    assert result.json()["ok"] is True, result.json()
