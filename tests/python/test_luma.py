"""Luma through the real binary (`serve --demo`, sandbox upstream): generate -> poll -> completed, download
URL, extend on the parent's channel with the parent's upstream id, failure -> refund, bad input in the
OpenAI envelope uncharged, idempotent resubmit, ownership, callbacks. Raw HTTP, as Luma clients speak it."""

from __future__ import annotations

import time
from typing import Any, Optional

from conftest import http, http_json

GENERATE = 400_000_000  # luma_generate, USD 0.40 in nano-USD
EXTEND = 300_000_000


def luma(gateway, method: str, path: str, payload: Any = None, key: Optional[str] = None, **headers: str):
    auth = {"Authorization": f"Bearer {key or gateway.demo_key}", **headers}
    if payload is None:
        return http(method, f"{gateway.base}{path}", headers=auth)
    return http_json(method, f"{gateway.base}{path}", payload, auth)


def is_openai_error(answer) -> bool:
    error = answer.json().get("error") or {}
    return isinstance(error.get("message"), str) and isinstance(error.get("type"), str) and "code" in error and "param" in error


def wait_state(gateway, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        got = luma(gateway, "GET", f"/luma/generations/{task_id}")
        assert got.status == 200, got.body
        if got.json()["state"] in ("completed", "failed"):
            return got.json()
        assert time.monotonic() < deadline, got.body
        time.sleep(0.05)


def test_generate_completes_then_download_and_extend_on_the_parents_channel(gateway):
    gateway.sandbox_config(task_ms=500)
    before = gateway.balance_nano()
    created = luma(gateway, "POST", "/luma/generations", {"user_prompt": "cat dance", "aspect_ratio": "16:9"})
    assert created.status == 200, created.body
    gen = created.json()
    assert gen["id"].startswith("task_") and gen["state"] == "pending" and gen["prompt"] == "cat dance"
    assert gen["created_at"].endswith("Z")
    assert before - gateway.balance_nano() == GENERATE
    done = wait_state(gateway, gen["id"])
    assert done["state"] == "completed" and done["video"]["url"].endswith(".mp4"), done
    upstream = gateway.task(gen["id"])["upstream_id"]
    assert upstream not in str(done)
    link = luma(gateway, "GET", f"/luma/generations/{gen['id']}/download_video_url")
    assert link.status == 200 and "X-Amz-Expires" in link.json()["url"], link.body
    extended = luma(gateway, "POST", f"/luma/generations/{gen['id']}/extend", {"user_prompt": "and it flies"})
    assert extended.status == 200, extended.body
    ext = extended.json()
    assert ext["id"] != gen["id"] and ext["state"] == "pending"
    assert wait_state(gateway, ext["id"])["state"] == "completed"
    assert gateway.task(ext["id"])["channel_id"] == gateway.task(gen["id"])["channel_id"] == gateway.channel_id("sandbox-luma")
    assert before - gateway.balance_nano() == GENERATE + EXTEND
    journal = gateway.journal()
    calls = [r for r in journal if r["path"].startswith("/luma/")]
    assert all(r["authorization"] == "Bearer sk-sandbox-demo-upstream" for r in calls)
    extend_calls = [r for r in calls if r["path"].endswith("/extend")]
    assert [r["path"] for r in extend_calls] == [f"/luma/generations/{upstream}/extend"]
    assert extend_calls[0]["body_json"]["user_prompt"] == "and it flies"
    assert any(r["path"] == f"/luma/generations/{upstream}/download_video_url" for r in calls)
    assert not any(gen["id"] in r["path"] for r in calls)
    gateway.ledger_reconciles()


def test_a_failed_generation_is_refunded_once(gateway):
    gateway.sandbox_config(task_ms=300)
    before = gateway.balance_nano()
    task_id = luma(gateway, "POST", "/luma/generations", {"user_prompt": "please fail"}).json()["id"]
    assert before - gateway.balance_nano() == GENERATE
    task = gateway.wait_task(task_id)
    assert task["state"] == "FAILURE" and task["refunded"] is True
    assert gateway.balance_nano() == before
    got = luma(gateway, "GET", f"/luma/generations/{task_id}").json()
    assert got["state"] == "failed" and got["failure_reason"]
    assert luma(gateway, "GET", f"/luma/generations/{task_id}/download_video_url").status == 400
    gateway.ledger_reconciles()


def test_bad_input_costs_nothing_and_never_goes_upstream(gateway):
    gateway.sandbox_config(task_ms=2000)
    running = luma(gateway, "POST", "/luma/generations", {"user_prompt": "slow"}).json()["id"]
    before = gateway.balance_nano()
    calls = len([r for r in gateway.journal() if r["method"] == "POST"])
    not_an_image = "data:image/png;base64,aGVsbG8gd29ybGQsIHRoaXMgaXMgbm90IGFuIGltYWdl"
    for body in ({}, {"user_prompt": ""}, {"user_prompt": "x", "aspect_ratio": "2:1"}, {"user_prompt": "x", "image_url": not_an_image}):
        answer = luma(gateway, "POST", "/luma/generations", body)
        assert answer.status == 400 and is_openai_error(answer), (body, answer.body)
    missing = luma(gateway, "POST", "/luma/generations/task_nope/extend", {"user_prompt": "x"})
    assert missing.status == 404 and is_openai_error(missing)
    unfinished = luma(gateway, "POST", f"/luma/generations/{running}/extend", {"user_prompt": "x"})
    assert unfinished.status == 400 and is_openai_error(unfinished)
    nokey = http("GET", f"{gateway.base}/luma/generations/{running}")
    assert nokey.status == 401 and is_openai_error(nokey)
    assert len([r for r in gateway.journal() if r["method"] == "POST"]) == calls, "bad input reached the upstream"
    refused = luma(gateway, "POST", "/luma/generations", {"user_prompt": "please reject"})
    assert refused.status == 400 and is_openai_error(refused), refused.body
    assert gateway.balance_nano() == before
    gateway.wait_task(running)  # nothing of this test is left for the poller
    gateway.ledger_reconciles()


def test_an_idempotent_resubmit_returns_the_first_task(gateway):
    before = gateway.balance_nano()
    body = {"user_prompt": "once only"}
    first = luma(gateway, "POST", "/luma/generations", body, **{"Idempotency-Key": "py-luma-1"}).json()
    second = luma(gateway, "POST", "/luma/generations", body, **{"Idempotency-Key": "py-luma-1"}).json()
    assert first["id"] == second["id"]
    assert before - gateway.balance_nano() == GENERATE
    assert len([r for r in gateway.journal() if r["path"] == "/luma/generations"]) == 1
    gateway.wait_task(first["id"])


def test_another_users_generation_is_not_found(gateway, other_key):
    gateway.sandbox_config(task_ms=300)
    task_id = luma(gateway, "POST", "/luma/generations", {"user_prompt": "mine"}).json()["id"]
    gateway.wait_task(task_id)
    before = gateway.balance_nano()
    for method, path, body in (
        ("GET", f"/luma/generations/{task_id}", None),
        ("GET", f"/luma/generations/{task_id}/download_video_url", None),
        ("POST", f"/luma/generations/{task_id}/extend", {"user_prompt": "theirs"}),
    ):
        answer = luma(gateway, method, path, body, key=other_key)
        assert answer.status == 404 and is_openai_error(answer), (path, answer.body)
    assert not any(r["path"].endswith("/extend") for r in gateway.journal())
    assert gateway.balance_nano() == before


def test_callbacks_are_delivered_and_never_sent_upstream(gateway, receiver):
    gateway.sandbox_config(task_ms=400)
    task_id = luma(gateway, "POST", "/luma/generations", {"user_prompt": "call me", "notify_hook": receiver.url}).json()["id"]
    bodies = receiver.wait_for(lambda b: b.get("state") == "completed")
    assert all(b["id"] == task_id for b in bodies)
    assert receiver.attempts > len(bodies)
    assert not any(receiver.url in str(r.get("body_json")) for r in gateway.journal())
