"""Kling through the real binary (`serve --demo`, sandbox upstream speaking the official Kling API with
a signed JWT): create -> query to success in Kling's own shape, failure -> refund, bad input, idempotent
resubmit, ownership, callbacks. Raw HTTP, as Kling clients speak it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, Optional

from conftest import http, http_json, make_png

KLING_ACCESS_KEY = "sandbox-kling-access-key"
KLING_SECRET_KEY = "sandbox-kling-secret-key-0123456789"
PRICE_TEXT2VIDEO = 200_000_000  # kling_text2video, USD 0.20
PRICE_V2_MASTER = 500_000_000  # kling_text2video:kling-v2-master
PRICE_IMAGE = 20_000_000
PRICE_TRY_ON = 50_000_000


def kling(gateway, method: str, path: str, payload: Any = None, key: Optional[str] = None, **headers: str):
    auth = {"Authorization": f"Bearer {key or gateway.demo_key}", **headers}
    if payload is None:
        return http(method, f"{gateway.base}/kling/v1/{path}", headers=auth)
    return http_json(method, f"{gateway.base}/kling/v1/{path}", payload, auth)


def unb64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def wait_query(gateway, path: str, task_id: str) -> dict[str, Any]:
    gateway.wait_task(task_id)
    answer = kling(gateway, "GET", f"{path}/{task_id}")
    assert answer.status == 200, answer.body
    return answer.json()


def test_text2video_runs_to_success_with_a_jwt_the_upstream_verified(gateway):
    gateway.sandbox_config(task_ms=400)
    before = gateway.balance_nano()
    created = kling(gateway, "POST", "videos/text2video", {"prompt": "a fox in snow", "external_task_id": "py-1"})
    assert created.status == 200, created.body
    body = created.json()
    assert body["code"] == 0 and body["message"] == "SUCCEED" and body["request_id"]
    task_id = body["data"]["task_id"]
    assert task_id.startswith("task_")
    assert body["data"]["task_status"] == "submitted"
    assert body["data"]["task_info"] == {"external_task_id": "py-1"}
    assert before - gateway.balance_nano() == PRICE_TEXT2VIDEO
    done = wait_query(gateway, "videos/text2video", task_id)
    data = done["data"]
    assert done["code"] == 0
    assert data["task_id"] == task_id and data["task_status"] == "succeed" and data["progress"] == "100%"
    assert data["task_result"]["videos"][0]["url"].endswith(".mp4")
    assert isinstance(data["created_at"], int) and data["created_at"] > 1_600_000_000_000
    # the official API got a JWT signed with the channel's secret, iss = the access key
    creates = [r for r in gateway.journal() if r["method"] == "POST" and r["path"] == "/klingai/v1/videos/text2video"]
    assert len(creates) == 1
    token = creates[0]["authorization"].removeprefix("Bearer ")
    header, payload, signature = token.split(".")
    assert json.loads(unb64url(header)) == {"alg": "HS256", "typ": "JWT"}
    claims = json.loads(unb64url(payload))
    assert claims["iss"] == KLING_ACCESS_KEY and claims["exp"] - claims["nbf"] == 1805
    expected = hmac.new(KLING_SECRET_KEY.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(unb64url(signature), expected)
    queries = [r for r in gateway.journal() if r["method"] == "GET" and r["path"].startswith("/klingai/v1/videos/text2video/")]
    assert queries, "the poller never queried the task upstream"
    assert not any(task_id in json.dumps(r) for r in gateway.journal())
    assert before - gateway.balance_nano() == PRICE_TEXT2VIDEO
    gateway.ledger_reconciles()


def test_images_and_try_on_with_a_base64_image(gateway):
    gateway.sandbox_config(task_ms=300)
    before = gateway.balance_nano()
    image = kling(gateway, "POST", "images/generations", {"prompt": "three pears", "n": 3}).json()["data"]["task_id"]
    human = base64.b64encode(make_png(8, 8)).decode()
    try_on = kling(
        gateway, "POST", "images/kolors-virtual-try-on", {"human_image": human, "cloth_image": "https://example.com/shirt.png"}
    )
    assert try_on.status == 200, try_on.body
    assert before - gateway.balance_nano() == PRICE_IMAGE + PRICE_TRY_ON
    assert len(wait_query(gateway, "images/generations", image)["data"]["task_result"]["images"]) == 3
    result = wait_query(gateway, "images/kolors-virtual-try-on", try_on.json()["data"]["task_id"])
    assert result["data"]["task_result"]["images"][0]["url"].endswith(".png")


def test_a_failed_task_is_refunded_once_at_the_model_price(gateway):
    gateway.sandbox_config(task_ms=300)
    before = gateway.balance_nano()
    created = kling(gateway, "POST", "videos/text2video", {"prompt": "please fail", "model_name": "kling-v2-master"})
    task_id = created.json()["data"]["task_id"]
    assert before - gateway.balance_nano() == PRICE_V2_MASTER
    task = gateway.wait_task(task_id)
    assert task["state"] == "FAILURE" and task["refunded"] is True and task["charged_nano"] == PRICE_V2_MASTER
    assert gateway.balance_nano() == before
    data = kling(gateway, "GET", f"videos/text2video/{task_id}").json()["data"]
    assert data["task_status"] == "failed" and "content violation" in data["task_status_msg"]
    gateway.ledger_reconciles()


def test_bad_input_and_refusals_cost_nothing_and_reach_no_upstream(gateway):
    before = gateway.balance_nano()
    not_image = base64.b64encode(b"just some text").decode()
    for path, body in [
        ("images/generations", {}),
        ("videos/text2video", {"prompt": ""}),
        ("videos/image2video", {"prompt": "no image"}),
        ("videos/image2video", {"image": not_image}),
        ("images/kolors-virtual-try-on", {"human_image": "https://example.com/h.png"}),
    ]:
        answer = kling(gateway, "POST", path, body)
        assert answer.status == 400, (path, answer.body)
        assert answer.json()["code"] == "invalid_request" and answer.json()["data"] is None
    assert kling(gateway, "POST", "videos/lip-sync", {"prompt": "x"}).status == 404
    assert not [r for r in gateway.journal() if "kling" in r["path"]]
    refused = kling(gateway, "POST", "videos/text2video", {"prompt": "please reject"})
    assert refused.status == 400 and refused.json()["code"] == "1301", refused.body
    assert gateway.balance_nano() == before
    gateway.ledger_reconciles()


def test_an_idempotent_resubmit_returns_the_first_task(gateway):
    before = gateway.balance_nano()
    body = {"image": "https://example.com/frame.png", "prompt": "once"}
    first = kling(gateway, "POST", "videos/image2video", body, **{"Idempotency-Key": "py-kling-1"}).json()
    second = kling(gateway, "POST", "videos/image2video", body, **{"Idempotency-Key": "py-kling-1"}).json()
    assert first["data"]["task_id"] == second["data"]["task_id"]
    assert before - gateway.balance_nano() == 250_000_000
    assert len([r for r in gateway.journal() if r["method"] == "POST"]) == 1
    gateway.wait_task(first["data"]["task_id"])  # no polls left running into the next test


def test_another_users_task_is_not_found(gateway, other_key):
    task_id = kling(gateway, "POST", "images/generations", {"prompt": "mine"}).json()["data"]["task_id"]
    theirs = kling(gateway, "GET", f"images/generations/{task_id}", key=other_key)
    assert theirs.status == 404 and theirs.json()["code"] == "task_not_exist" and theirs.json()["data"] is None
    assert kling(gateway, "GET", f"images/generations/{task_id}").status == 200
    gateway.wait_task(task_id)


def test_callbacks_are_delivered_and_never_sent_upstream(gateway, receiver):
    gateway.sandbox_config(task_ms=400)
    created = kling(gateway, "POST", "videos/text2video", {"prompt": "call me", "callback_url": receiver.url})
    task_id = created.json()["data"]["task_id"]
    bodies = receiver.wait_for(lambda b: b.get("task_status") == "succeed")
    assert all(b["task_id"] == task_id for b in bodies)
    assert receiver.attempts > len(bodies)
    assert not any("callback_url" in json.dumps(r.get("body_json")) for r in gateway.journal())
    gateway.wait_task(task_id)


def test_the_channel_test_signs_its_probe(gateway):
    result = gateway.admin("POST", f"/channels/{gateway.channel_id('sandbox-kling')}/test")
    assert result.status == 200, result.body
    assert result.json()["ok"] is True, result.json()
