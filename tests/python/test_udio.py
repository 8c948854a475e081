"""Udio through the real binary (`serve --demo`, sandbox upstream): submit -> poll to success with progress,
failure -> refund, bad input uncharged and never sent upstream, idempotent resubmit, ownership, callbacks.
Raw HTTP, as Udio clients speak it."""

from __future__ import annotations

import time
from typing import Any, Optional

from conftest import http, http_json

PRICE = 50_000_000  # udio_music, USD 0.05 in nano-USD


def udio(gateway, method: str, path: str, payload: Any = None, key: Optional[str] = None, **headers: str):
    auth = {"Authorization": f"Bearer {key or gateway.demo_key}", **headers}
    if payload is None:
        return http(method, f"{gateway.base}{path}", headers=auth)
    return http_json(method, f"{gateway.base}{path}", payload, auth)


def music(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"gen_params": {"prompt": prompt, "lyrics_type": "instrumental", "model_type": "udio32-v1.5", **extra}}


def test_music_runs_to_success_with_progress_charged_once(gateway):
    gateway.sandbox_config(task_ms=1500)
    before = gateway.balance_nano()
    submitted = udio(gateway, "POST", "/udio/submit/music", music("lofi jazz, rainy night"))
    assert submitted.status == 200, submitted.body
    assert submitted.json()["code"] == "success"
    task_id = submitted.json()["data"]
    assert task_id.startswith("task_")
    assert before - gateway.balance_nano() == PRICE
    progress = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        data = udio(gateway, "GET", f"/udio/fetch/{task_id}").json()["data"]
        assert data["task_id"] == task_id and data["action"] == "udio-generate"
        progress.add(data["progress"])
        if data["status"] in ("SUCCESS", "FAILURE"):
            break
        time.sleep(0.05)
    assert data["status"] == "SUCCESS", data
    assert data["progress"] == "100%"
    assert any(p not in ("0%", "100%") for p in progress), progress
    assert len(data["songs"]) == 2 and all(s["finished"] and s["song_path"] for s in data["songs"])
    assert before - gateway.balance_nano() == PRICE
    upstream = gateway.task(task_id)["upstream_id"]
    calls = [r for r in gateway.journal() if r["path"].startswith("/udio/")]
    assert any(r["path"] == "/udio/submit/music" for r in calls)
    assert any(r["path"] == f"/udio/fetch/{upstream}" and r["method"] == "GET" for r in calls)
    assert all(r["authorization"] == "Bearer sk-sandbox-demo-upstream" for r in calls)
    assert not any(task_id in r["path"] for r in calls)
    gateway.ledger_reconciles()


def test_a_failed_task_is_refunded_once(gateway):
    gateway.sandbox_config(task_ms=300)
    before = gateway.balance_nano()
    task_id = udio(gateway, "POST", "/udio/submit/music", music("please fail")).json()["data"]
    assert before - gateway.balance_nano() == PRICE
    task = gateway.wait_task(task_id)
    assert task["state"] == "FAILURE" and task["refunded"] is True
    assert gateway.balance_nano() == before
    data = udio(gateway, "GET", f"/udio/fetch/{task_id}").json()["data"]
    assert data["status"] == "FAILURE" and data["fail_reason"]
    gateway.ledger_reconciles()


def test_bad_input_and_refusals_cost_nothing(gateway):
    before = gateway.balance_nano()
    calls = len(gateway.journal())
    for body in ({}, {"gen_params": {}}, {"gen_params": {"prompt": "x", "lyrics_type": "hummed"}}, {"prompt": "top"}):
        answer = udio(gateway, "POST", "/udio/submit/music", body)
        assert answer.status == 400, (body, answer.body)
        assert answer.json()["code"] == "invalid_request" and answer.json()["data"] is None
    unknown = udio(gateway, "POST", "/udio/submit/lyrics", music("x"))
    assert unknown.status == 400 and unknown.json()["data"] is None
    assert len(gateway.journal()) == calls, "bad input reached the upstream"
    refused = udio(gateway, "POST", "/udio/submit/music", music("please reject"))
    assert refused.status == 400 and refused.json()["data"] is None, refused.body
    nokey = http("GET", f"{gateway.base}/udio/fetch/task_x")
    assert nokey.status == 401 and nokey.json()["data"] is None
    assert gateway.balance_nano() == before
    gateway.ledger_reconciles()


def test_an_idempotent_resubmit_returns_the_first_task(gateway):
    before = gateway.balance_nano()
    first = udio(gateway, "POST", "/udio/submit/music", music("once only"), **{"Idempotency-Key": "py-udio-1"}).json()
    second = udio(gateway, "POST", "/udio/submit/music", music("once only"), **{"Idempotency-Key": "py-udio-1"}).json()
    assert first["data"] == second["data"]
    assert before - gateway.balance_nano() == PRICE
    assert len([r for r in gateway.journal() if r["path"] == "/udio/submit/music"]) == 1
    gateway.wait_task(first["data"])  # nothing of this test is left for the poller


def test_another_users_task_is_not_found(gateway, other_key):
    task_id = udio(gateway, "POST", "/udio/submit/music", music("mine")).json()["data"]
    theirs = udio(gateway, "GET", f"/udio/fetch/{task_id}", key=other_key)
    assert theirs.status == 404 and theirs.json()["code"] == "task_not_exist" and theirs.json()["data"] is None
    gateway.wait_task(task_id)


def test_callbacks_are_delivered_and_never_sent_upstream(gateway, receiver):
    gateway.sandbox_config(task_ms=400)
    body = {**music("call me"), "notify_hook": receiver.url}
    task_id = udio(gateway, "POST", "/udio/submit/music", body).json()["data"]
    bodies = receiver.wait_for(lambda b: b.get("status") == "SUCCESS")
    assert all(b["task_id"] == task_id for b in bodies)
    assert len(bodies[-1]["songs"]) == 2
    assert receiver.attempts > len(bodies)
    assert not any(receiver.url in str(r.get("body_json")) for r in gateway.journal())
