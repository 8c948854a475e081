"""Money through the official SDK: costs, balances, quota refusals and rate limits."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from conftest import http


def balance_nano(gateway) -> int:
    result = gateway.admin("GET", f"/users/{gateway.demo_user_id()}")
    assert result.status == 200, result.body
    return result.json()["balance_nano"]


def test_a_chat_answer_carries_its_cost_and_the_balance_moves_by_exactly_that(gateway, client):
    before = balance_nano(gateway)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "how much is this"}]
    )
    completion = raw.parse()
    cost = Decimal(raw.headers["x-uniapi-cost-usd"])
    usage = completion.usage
    # 0.15 / 0.60 USD per million tokens in the demo, rounded up to the next nano-dollar once
    exact = (Decimal(usage.prompt_tokens) * Decimal("0.15") + Decimal(usage.completion_tokens) * Decimal("0.60")) / Decimal(10**6)
    assert cost == exact.quantize(Decimal("0.000000001"), rounding="ROUND_CEILING")
    assert before - balance_nano(gateway) == int(cost * 10**9)
    log = gateway.log(raw.headers["x-uniapi-request-id"])
    assert log["cost_nano"] == int(cost * 10**9)
    assert log["cost_detail"]["basis"] == "reported"


def test_balance_endpoints_through_the_sdk_and_plain_http(gateway, client):
    usd = client.get("/billing/usage", cast_to=object, options={"params": {"unit": "usd"}})
    assert usd["success"] is True
    user = gateway.admin("GET", f"/users/{gateway.demo_user_id()}").json()
    assert usd["data"]["balance"] == pytest.approx(user["balance_usd"], abs=1e-9)
    credits = client.get("/billing/usage", cast_to=object)
    assert credits["data"]["balance"] == pytest.approx(user["balance_usd"] * 500_000, rel=1e-9)
    token = client.get("/billing/usage", cast_to=object, options={"params": {"type": "token", "unit": "usd"}})
    assert token["data"]["balance"] == -1  # the demo key has no cap of its own
    for path in ("/v1/dashboard/billing/subscription", "/dashboard/billing/subscription"):
        result = http("GET", gateway.base + path, headers={"Authorization": f"Bearer {gateway.demo_key}"})
        assert result.status == 200, result.body
        sub = result.json()
        assert sub["object"] == "billing_subscription"
    used = http("GET", gateway.base + "/dashboard/billing/usage", headers={"Authorization": f"Bearer {gateway.demo_key}"}).json()
    # clients compute hard_limit_usd - total_usage / 100 = balance
    assert sub["hard_limit_usd"] - used["total_usage"] / 100 == pytest.approx(user["balance_usd"], abs=1e-6)
    bad = http("GET", gateway.base + "/v1/billing/usage", headers={"Authorization": "Bearer sk-wrong"})
    assert bad.status == 401 and bad.json()["error"]["code"] == "invalid_api_key"


def test_a_key_over_its_cap_gets_insufficient_quota_and_the_upstream_is_not_called(gateway, make_key):
    key = make_key(quota_usd=0.000001)
    client = gateway.client(key["key"])
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "insufficient_quota"
    assert gateway.journal() == []


def test_requests_per_minute_raise_rate_limit_error_with_headers(gateway, make_key):
    key = make_key(rpm=1)
    client = gateway.client(key["key"])
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-ratelimit-limit-requests"] == "1"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_a_stream_is_billed_without_showing_the_usage_chunk(gateway, client):
    before = balance_nano(gateway)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream and bill"}], stream=True
    ))
    assert all(c.usage is None for c in chunks)
    after = balance_nano(gateway)
    assert before > after
    reconcile = gateway.admin("GET", "/ledger/reconcile").json()
    assert reconcile["ok"] is True, reconcile
