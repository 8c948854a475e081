"""Midjourney through the real binary (`serve --demo`, sandbox upstream): submit -> poll to success with
progress, mode prices, a follow-up action, failure -> refund, idempotent resubmit, ownership, callbacks,
bad input. Raw HTTP with the `mj-api-secret` header, as midjourney-proxy clients speak it."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from conftest import http, http_json

PRICE_IMAGINE = 50_000_000  # mj_imagine, USD 0.05 in nano-USD
PRICE_RELAX_IMAGINE = 20_000_000
PRICE_TURBO_IMAGINE = 100_000_000
PRICE_UPSCALE = 20_000_000
UPSTREAM_KEY = "sk-sandbox-demo-upstream"
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


_started: list[str] = []


@pytest.fixture(autouse=True)
def tasks_end_within_the_test(gateway):
    """Every task a test starts has ended before the next test, so no poll reaches its journal."""
    _started.clear()
    yield
    for task_id in _started:
        gateway.wait_task(task_id)


def mj(gateway, method: str, path: str, payload: Any = None, key: Optional[str] = None, **headers: str):
    auth = {"mj-api-secret": key or gateway.demo_key, **headers}
    if payload is None:
        return http(method, f"{gateway.base}{path}", headers=auth)
    return http_json(method, f"{gateway.base}{path}", payload, auth)


def submit(gateway, path: str, payload: Any, **headers: str) -> str:
    answer = mj(gateway, "POST", path, payload, **headers)
    assert answer.status == 200, answer.body
    body = answer.json()
    assert body["code"] == 1 and body["description"] == "Submit success", body
    assert body["result"].startswith("task_")
    _started.append(body["result"])
    return body["result"]


def submits(gateway, path: str) -> list[dict[str, Any]]:
    return [r for r in gateway.journal() if r["path"] == path]


def test_imagine_runs_to_success_with_progress_and_fetch_answers_from_the_store(gateway):
    gateway.sandbox_config(task_ms=2500)
    before = gateway.balance_nano()
    task_id = submit(gateway, "/mj/submit/imagine", {"prompt": "a red lighthouse", "state": "py"})
    assert before - gateway.balance_nano() == PRICE_IMAGINE
    statuses = set()
    while True:
        fetched = mj(gateway, "GET", f"/mj/task/{task_id}/fetch")
        assert fetched.status == 200, fetched.body
        task = fetched.json()
        statuses.add((task["status"], task["progress"]))
        if task["status"] in ("SUCCESS", "FAILURE"):
            break
    assert task["status"] == "SUCCESS" and task["progress"] == "100%"
    assert any(s == "IN_PROGRESS" and p not in ("0%", "100%") for s, p in statuses), statuses
    assert task["id"] == task_id and task["action"] == "IMAGINE" and task["state"] == "py"
    assert task["prompt"] == "a red lighthouse" and task["imageUrl"]
    assert len(task["buttons"]) == 9 and task["submitTime"] > 1_600_000_000_000
    listed = mj(gateway, "POST", "/mj/task/list-by-condition", {"ids": [task_id, "task_nope"]}).json()
    assert [t["id"] for t in listed] == [task_id]
    # the upstream got /mj/... with the channel's own key and the mode, never uniapi's id
    sent = submits(gateway, "/mj/submit/imagine")
    assert len(sent) == 1
    assert sent[0]["headers"]["mj-api-secret"] == UPSTREAM_KEY
    assert sent[0]["body_json"]["accountFilter"] == {"modes": ["FAST"]}
    assert not any(task_id in str(r) for r in gateway.journal())
    assert before - gateway.balance_nano() == PRICE_IMAGINE
    gateway.ledger_reconciles()


def test_each_mode_has_its_own_price(gateway):
    gateway.sandbox_config(task_ms=300)
    for prefix, price, mode in [
        ("/mj-relax", PRICE_RELAX_IMAGINE, "RELAX"),
        ("/mj-fast", PRICE_IMAGINE, "FAST"),
        ("/mj-turbo", PRICE_TURBO_IMAGINE, "TURBO"),
    ]:
        before = gateway.balance_nano()
        task_id = submit(gateway, f"{prefix}/mj/submit/imagine", {"prompt": "same cat"})
        assert before - gateway.balance_nano() == price, prefix
        assert gateway.task(task_id)["charged_nano"] == price
        assert submits(gateway, "/mj/submit/imagine")[-1]["body_json"]["accountFilter"]["modes"] == [mode]
    gateway.ledger_reconciles()


def test_a_follow_up_action_runs_on_the_parent(gateway):
    gateway.sandbox_config(task_ms=300)
    parent = submit(gateway, "/mj/submit/imagine", {"prompt": "a fox"})
    assert gateway.wait_task(parent)["state"] == "SUCCESS"
    buttons = mj(gateway, "GET", f"/mj/task/{parent}/fetch").json()["buttons"]
    upscale = next(b["customId"] for b in buttons if b["label"] == "U2")
    before = gateway.balance_nano()
    child = submit(gateway, "/mj/submit/action", {"taskId": parent, "customId": upscale})
    assert before - gateway.balance_nano() == PRICE_UPSCALE
    sent = submits(gateway, "/mj/submit/action")
    assert len(sent) == 1 and sent[0]["body_json"]["customId"] == upscale
    assert sent[0]["body_json"]["taskId"] != parent and sent[0]["body_json"]["taskId"].isdigit()
    assert gateway.wait_task(child)["state"] == "SUCCESS"
    assert gateway.task(child)["channel_id"] == gateway.task(parent)["channel_id"]
    assert mj(gateway, "GET", f"/mj/task/{child}/fetch").json()["action"] == "UPSCALE"


def test_a_failed_task_is_refunded_once(gateway):
    gateway.sandbox_config(task_ms=300)
    before = gateway.balance_nano()
    task_id = submit(gateway, "/mj/submit/imagine", {"prompt": "please fail"})
    task = gateway.wait_task(task_id)
    assert task["state"] == "FAILURE" and task["refunded"] is True
    assert gateway.balance_nano() == before
    fetched = mj(gateway, "GET", f"/mj/task/{task_id}/fetch").json()
    assert fetched["status"] == "FAILURE" and fetched["failReason"]
    gateway.ledger_reconciles()


def test_bad_input_and_refusals_cost_nothing(gateway):
    before = gateway.balance_nano()
    cases = [
        ("/mj/submit/imagine", {}, 400, 4),
        ("/mj/submit/imagine", {"prompt": "x", "base64Array": ["data:image/png;base64,aGVsbG8="]}, 400, 4),
        ("/mj/submit/describe", {"base64": "not a data url"}, 400, 4),
        ("/mj/submit/action", {"taskId": "task_nope", "customId": "MJ::JOB::dance::1::x"}, 400, 4),
        ("/mj/submit/action", {"taskId": "task_nope", "customId": "MJ::JOB::upsample::1::x"}, 404, 3),
        ("/mj/submit/dance", {"prompt": "x"}, 400, 4),
    ]
    for path, body, status, code in cases:
        answer = mj(gateway, "POST", path, body)
        assert answer.status == status, (path, answer.body)
        assert answer.json()["code"] == code and answer.json()["result"] is None
    assert not [r for r in gateway.journal() if r["path"].startswith("/mj/submit")]
    refused = mj(gateway, "POST", "/mj/submit/imagine", {"prompt": "please reject"})
    assert refused.status == 400 and refused.json()["code"] == 24, refused.body
    unauthorized = http_json("POST", f"{gateway.base}/mj/submit/imagine", {"prompt": "x"})
    assert unauthorized.status == 401 and unauthorized.json()["code"] == 4
    assert gateway.balance_nano() == before


def test_an_idempotent_resubmit_returns_the_first_task(gateway):
    gateway.sandbox_config(task_ms=300)
    before = gateway.balance_nano()
    body = {"prompt": "only once"}
    first = submit(gateway, "/mj/submit/imagine", body, **{"Idempotency-Key": "py-mj-1"})
    second = submit(gateway, "/mj/submit/imagine", body, **{"Idempotency-Key": "py-mj-1"})
    assert first == second
    assert before - gateway.balance_nano() == PRICE_IMAGINE
    assert len(submits(gateway, "/mj/submit/imagine")) == 1


def test_another_users_task_is_not_found(gateway, other_key):
    gateway.sandbox_config(task_ms=300)
    task_id = submit(gateway, "/mj/submit/imagine", {"prompt": "mine"})
    theirs = mj(gateway, "GET", f"/mj/task/{task_id}/fetch", key=other_key)
    assert theirs.status == 404 and theirs.json()["code"] == 3
    listed = mj(gateway, "POST", "/mj/task/list-by-condition", {"ids": [task_id]}, key=other_key)
    assert listed.json() == []
    follow = mj(gateway, "POST", "/mj/submit/change", {"taskId": task_id, "action": "REROLL"}, key=other_key)
    assert follow.status == 404 and follow.json()["code"] == 3
    seed = mj(gateway, "GET", f"/mj/task/{task_id}/image-seed", key=other_key)
    assert seed.status == 404
    assert not submits(gateway, "/mj/submit/change")


def test_callbacks_are_delivered_and_never_sent_upstream(gateway, receiver):
    gateway.sandbox_config(task_ms=400)
    task_id = submit(gateway, "/mj/submit/imagine", {"prompt": "call me", "notifyHook": receiver.url})
    bodies = receiver.wait_for(lambda b: b.get("status") == "SUCCESS")
    assert all(b["id"] == task_id for b in bodies)
    assert receiver.attempts > len(bodies)  # the refused first delivery was retried
    assert not any(receiver.url in str(r) for r in gateway.journal())
