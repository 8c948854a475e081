"""Suno through the real binary (`serve --demo`, sandbox upstream): submit -> poll to success, failure ->
refund, idempotent resubmit, ownership, callbacks. Raw HTTP, as Suno clients speak it."""

from __future__ import annotations

from typing import Any, Optional

from conftest import http, http_json

PRICE_MUSIC = 100_000_000  # suno_music, USD 0.10 in nano-USD
PRICE_LYRICS = 20_000_000


def suno(gateway, method: str, path: str, payload: Any = None, key: Optional[str] = None, **headers: str):
    auth = {"Authorization": f"Bearer {key or gateway.demo_key}", **headers}
    if payload is None:
        return http(method, f"{gateway.base}{path}", headers=auth)
    return http_json(method, f"{gateway.base}{path}", payload, auth)


def test_music_runs_to_success_charged_once_and_fetch_answers_from_the_store(gateway):
    gateway.sandbox_config(task_ms=400)
    before = gateway.balance_nano()
    submitted = suno(gateway, "POST", "/suno/submit/music", {"gpt_description_prompt": "a calm song", "mv": "chirp-v4"})
    assert submitted.status == 200, submitted.body
    assert submitted.json()["code"] == "success"
    task_id = submitted.json()["data"]
    assert task_id.startswith("task_")
    assert before - gateway.balance_nano() == PRICE_MUSIC
    task = gateway.wait_task(task_id)
    assert task["state"] == "SUCCESS" and not task["refunded"]
    fetched = suno(gateway, "GET", f"/suno/fetch/{task_id}").json()
    assert fetched["code"] == "success"
    assert fetched["data"]["task_id"] == task_id
    assert fetched["data"]["status"] == "SUCCESS" and fetched["data"]["progress"] == "100%"
    assert len(fetched["data"]["data"]) == 2
    batch = suno(gateway, "POST", "/suno/fetch", {"ids": [task_id, "task_nope"]}).json()
    assert [t["task_id"] for t in batch["data"]] == [task_id]
    assert before - gateway.balance_nano() == PRICE_MUSIC
    # the upstream got the sandbox channel's key, never uniapi's id
    calls = [r for r in gateway.journal() if r["path"].startswith("/suno/")]
    assert calls and all(r["authorization"] == "Bearer sk-sandbox-demo-upstream" for r in calls)
    gateway.ledger_reconciles()


def test_a_failed_task_is_refunded_once(gateway):
    gateway.sandbox_config(task_ms=300)
    before = gateway.balance_nano()
    submitted = suno(gateway, "POST", "/suno/submit/lyrics", {"prompt": "please fail"})
    task_id = submitted.json()["data"]
    task = gateway.wait_task(task_id)
    assert task["state"] == "FAILURE" and task["refunded"] is True
    assert gateway.balance_nano() == before
    assert suno(gateway, "GET", f"/suno/fetch/{task_id}").json()["data"]["status"] == "FAILURE"
    gateway.ledger_reconciles()


def test_bad_input_and_upstream_refusals_cost_nothing(gateway):
    before = gateway.balance_nano()
    missing = suno(gateway, "POST", "/suno/submit/lyrics", {})
    assert missing.status == 400 and missing.json()["data"] is None and missing.json()["code"]
    unknown = suno(gateway, "POST", "/suno/submit/dance", {"prompt": "x"})
    assert unknown.status == 400
    refused = suno(gateway, "POST", "/suno/submit/lyrics", {"prompt": "please reject"})
    assert refused.status == 400, refused.body
    assert gateway.balance_nano() == before


def test_an_idempotent_resubmit_returns_the_first_task(gateway):
    before = gateway.balance_nano()
    body = {"prompt": "once only"}
    first = suno(gateway, "POST", "/suno/submit/lyrics", body, **{"Idempotency-Key": "py-order-1"}).json()
    second = suno(gateway, "POST", "/suno/submit/lyrics", body, **{"Idempotency-Key": "py-order-1"}).json()
    assert first["data"] == second["data"]
    assert before - gateway.balance_nano() == PRICE_LYRICS
    assert len([r for r in gateway.journal() if r["path"] == "/suno/submit/lyrics"]) == 1
    gateway.wait_task(first["data"])  # no polls left running into the next test's journal


def test_another_users_task_is_not_found(gateway, other_key):
    task_id = suno(gateway, "POST", "/suno/submit/lyrics", {"prompt": "mine"}).json()["data"]
    theirs = suno(gateway, "GET", f"/suno/fetch/{task_id}", key=other_key)
    assert theirs.status == 404 and theirs.json()["code"] == "task_not_exist"
    batch = suno(gateway, "POST", "/suno/fetch", {"ids": [task_id]}, key=other_key).json()
    assert batch["data"] == []
    gateway.wait_task(task_id)


def test_callbacks_are_delivered_on_state_changes(gateway, receiver):
    gateway.sandbox_config(task_ms=400)
    task_id = suno(gateway, "POST", "/suno/submit/lyrics", {"prompt": "call me", "notify_hook": receiver.url}).json()["data"]
    bodies = receiver.wait_for(lambda b: b.get("status") == "SUCCESS")
    assert all(b["task_id"] == task_id for b in bodies)
    assert receiver.attempts > len(bodies)  # the refused first delivery was retried
    assert not any(receiver.url in str(r.get("body_json")) for r in gateway.journal())
