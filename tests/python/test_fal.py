"""Fal's queue protocol through the real binary (`serve --demo`, sandbox upstream): submit -> status ->
result to success with every URL pointing at uniapi, failure -> refund, idempotent resubmit, ownership,
upstream refusal and bad input uncharged, callbacks (`fal_webhook`) never sent upstream."""

from __future__ import annotations

import time
from typing import Any, Optional

from conftest import http, http_json

MODEL = "fal-ai/flux-1/dev"
PRICE = 25_000_000  # fal-ai/flux-1/dev, USD 0.025 in nano-USD
VIDEO = "fal-ai/kling-video/v1/standard/text-to-video"


def fal(gateway, method: str, path: str, payload: Any = None, key: Optional[str] = None, scheme: str = "Key", **headers: str):
    auth = {"Authorization": f"{scheme} {key or gateway.demo_key}", **headers}
    if payload is None:
        return http(method, f"{gateway.base}{path}", headers=auth)
    return http_json(method, f"{gateway.base}{path}", payload, auth)


def wait_completed(gateway, status_url: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        status = fal(gateway, "GET", status_url.removeprefix(gateway.base) + "?logs=1").json()
        seen.append(status["status"])
        if status["status"] == "COMPLETED":
            return status
        time.sleep(0.1)
    raise AssertionError(f"never COMPLETED: {seen}")


def test_a_request_runs_to_success_with_urls_at_the_gateway(gateway):
    gateway.sandbox_config(task_ms=600)
    before = gateway.balance_nano()
    submitted = fal(gateway, "POST", f"/{MODEL}", {"prompt": "a tiger in the snow", "num_images": 2})
    assert submitted.status == 200, submitted.body
    answer = submitted.json()
    task_id = answer["request_id"]
    assert task_id.startswith("task_") and answer["status"] == "IN_QUEUE"
    for field in ("response_url", "status_url", "cancel_url"):
        assert answer[field].startswith(f"{gateway.base}/fal-ai/flux-1/requests/{task_id}"), answer
    assert before - gateway.balance_nano() == PRICE
    early = fal(gateway, "GET", f"/{MODEL}/requests/{task_id}/status").json()
    assert early["status"] in ("IN_QUEUE", "IN_PROGRESS") and early["request_id"] == task_id
    assert fal(gateway, "GET", f"/fal-ai/flux-1/requests/{task_id}").status == 400  # not finished yet
    status = wait_completed(gateway, answer["status_url"])
    assert status["response_url"] == answer["response_url"] and "error" not in status
    result = fal(gateway, "GET", answer["response_url"].removeprefix(gateway.base))
    assert result.status == 200, result.body
    images = result.json()["images"]
    assert len(images) == 2 and all(i["url"].startswith("https://") for i in images)
    # the full model path answers too (fal's sub-path rule), with Bearer as well as Key
    assert fal(gateway, "GET", f"/{MODEL}/requests/{task_id}", scheme="Bearer").json() == result.json()
    task = gateway.task(task_id)
    assert task["state"] == "SUCCESS" and not task["refunded"]
    assert before - gateway.balance_nano() == PRICE
    calls = [r for r in gateway.journal() if r["path"].startswith("/fal-ai/")]
    assert calls[0]["path"] == f"/{MODEL}" and calls[0]["body_json"] == {"prompt": "a tiger in the snow", "num_images": 2}
    assert all(r["authorization"] == "Key sk-sandbox-demo-upstream" for r in calls)
    assert any(r["path"].startswith("/fal-ai/flux-1/requests/") for r in calls)
    gateway.ledger_reconciles()


def test_a_video_model_path_runs_too(gateway):
    gateway.sandbox_config(task_ms=300)
    answer = fal(gateway, "POST", f"/{VIDEO}", {"prompt": "waves at dusk"}).json()
    wait_completed(gateway, answer["status_url"])
    result = fal(gateway, "GET", answer["response_url"].removeprefix(gateway.base)).json()
    assert result["video"]["url"].endswith(".mp4")


def test_a_failed_request_is_refunded_and_answers_fals_error(gateway):
    gateway.sandbox_config(task_ms=300)
    before = gateway.balance_nano()
    answer = fal(gateway, "POST", f"/{MODEL}", {"prompt": "please fail"}).json()
    task = gateway.wait_task(answer["request_id"])
    assert task["state"] == "FAILURE" and task["refunded"] is True
    assert gateway.balance_nano() == before
    status = fal(gateway, "GET", answer["status_url"].removeprefix(gateway.base)).json()
    assert status["status"] == "COMPLETED" and status["error"]
    result = fal(gateway, "GET", answer["response_url"].removeprefix(gateway.base))
    assert result.status >= 400 and result.json()["detail"]
    gateway.ledger_reconciles()


def test_bad_input_refusals_and_unpriced_models_cost_nothing(gateway):
    before = gateway.balance_nano()
    gateway.clear_journal()
    not_json = http("POST", f"{gateway.base}/{MODEL}", b"not json", {"Authorization": f"Key {gateway.demo_key}", "Content-Type": "application/json"})
    assert not_json.status == 400 and not_json.json()["error"]["message"]
    assert fal(gateway, "POST", "/fal-ai/flux-2/unpriced", {"prompt": "x"}).status in (403, 503)
    assert gateway.journal() == []
    missing = fal(gateway, "POST", f"/{MODEL}", {"num_images": 1})
    assert missing.status == 422 and "prompt" in missing.json()["error"]["message"]
    refused = fal(gateway, "POST", f"/{MODEL}", {"prompt": "please reject"})
    assert refused.status == 422 and refused.json()["error"]
    unauthorized = fal(gateway, "POST", f"/{MODEL}", {"prompt": "x"}, key="sk-wrong")
    assert unauthorized.status == 401 and unauthorized.json()["error"]
    assert gateway.balance_nano() == before


def test_an_idempotent_resubmit_returns_the_first_request(gateway):
    gateway.sandbox_config(task_ms=300)
    before = gateway.balance_nano()
    first = fal(gateway, "POST", f"/{MODEL}", {"prompt": "once"}, **{"Idempotency-Key": "fal-py-1"}).json()
    second = fal(gateway, "POST", f"/{MODEL}", {"prompt": "once"}, **{"Idempotency-Key": "fal-py-1"}).json()
    assert first["request_id"] == second["request_id"]
    assert before - gateway.balance_nano() == PRICE
    assert len([r for r in gateway.journal() if r["path"] == f"/{MODEL}" and r["body_json"] == {"prompt": "once"}]) == 1
    gateway.wait_task(first["request_id"])  # no poll of it leaks into a later test's journal


def test_another_users_request_is_not_found(gateway, other_key):
    gateway.sandbox_config(task_ms=300)
    answer = fal(gateway, "POST", f"/{MODEL}", {"prompt": "mine"}).json()
    for path in (f"/fal-ai/flux-1/requests/{answer['request_id']}/status", f"/fal-ai/flux-1/requests/{answer['request_id']}"):
        theirs = fal(gateway, "GET", path, key=other_key)
        assert theirs.status == 404 and theirs.json()["error"]["code"]
    gateway.wait_task(answer["request_id"])


def test_the_fal_webhook_is_called_and_never_sent_upstream(gateway, receiver):
    gateway.sandbox_config(task_ms=400)
    answer = fal(gateway, "POST", f"/{MODEL}?fal_webhook={receiver.url}", {"prompt": "call me"}).json()
    bodies = receiver.wait_for(lambda b: b.get("status") == "COMPLETED")
    assert all(b["request_id"] == answer["request_id"] for b in bodies)
    assert bodies[-1]["payload"]["images"]
    assert receiver.attempts > len(bodies)
    assert not any(receiver.url in str(r.get("body_json")) or "fal_webhook" in r["path"] for r in gateway.journal())
