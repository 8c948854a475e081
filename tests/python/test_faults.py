"""Upstream faults through the SDK (no SDK retries): errors in the OpenAI shape, stream cuts, and
failover to a second channel, checked against the sandbox journal and the request log."""

from __future__ import annotations

import json

import openai
import pytest

from conftest import SANDBOX_KEY, Gateway, sandbox_reply

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "fault tolerance"}]


def error_body(err: openai.APIStatusError) -> dict:
    body = err.response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def upstream_calls(gateway: Gateway) -> list[dict]:
    calls = gateway.journal()
    assert all(c["authorization"] == f"Bearer {SANDBOX_KEY}" for c in calls)
    return calls


# ---- one channel


def test_upstream_500_becomes_a_502(gateway, client):
    gateway.fault(count=1, status=500, path=CHAT)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    err = info.value
    assert err.status_code == 502
    error = error_body(err)
    assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_unavailable"
    assert err.code == "upstream_unavailable"
    # the sandbox's own error text stays in the gateway's log, not in the client's answer
    assert "sandbox fault injection" not in error["message"]
    assert len(upstream_calls(gateway)) == 1
    assert gateway.pending_faults() == []

    log = gateway.log(err.response.headers["x-uniapi-request-id"])
    assert log["outcome"] == "failed"
    assert log["status"] == 502
    assert log["channel_id"] is None
    assert len(log["attempts"]) == 1
    attempt = log["attempts"][0]
    assert attempt["channel"] == "sandbox-openai"
    assert attempt["status"] == 500
    assert "500" in attempt["error"]
    assert attempt["key_hint"] and SANDBOX_KEY not in json.dumps(log)

    # the fault was used up: the next call goes through
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices


def test_upstream_503_on_embeddings(gateway, client):
    gateway.fault(count=1, status=503, path="/v1/embeddings")
    with pytest.raises(openai.InternalServerError) as info:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert info.value.status_code == 502
    log = gateway.log(info.value.response.headers["x-uniapi-request-id"])
    assert [a["status"] for a in log["attempts"]] == [503]


def test_upstream_429_stays_a_429(gateway, client):
    gateway.fault(count=1, status=429, path=CHAT, retry_after=7)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    err = info.value
    assert err.status_code == 429
    error = error_body(err)
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    assert err.response.headers["retry-after"] == "7"

    log = gateway.log(err.response.headers["x-uniapi-request-id"])
    assert log["outcome"] == "failed"
    assert log["status"] == 429
    assert [(a["status"], "429" in (a["error"] or "")) for a in log["attempts"]] == [(429, True)]


def test_stream_cut_raises_while_iterating(gateway, client):
    gateway.fault(count=1, path=CHAT, cut_after=2)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert raw.status_code == 200
    request_id = raw.headers["x-uniapi-request-id"]

    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in raw.parse():
            received.append(chunk)
    # the head chunk and the two content chunks arrived before the cut
    content = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert len(received) == 3, received
    assert content and sandbox_reply(MESSAGES[0]["content"]).startswith(content)
    assert all(c.choices[0].finish_reason is None for c in received)
    err = info.value
    assert isinstance(err.body, dict)
    assert err.body["code"] == "upstream_stream_cut"
    assert err.body["type"] == "upstream_error"
    assert "ended the stream" in err.message

    log = gateway.log(request_id)
    assert log["outcome"] == "upstream_cut"
    assert log["stream"] is True
    assert log["status"] == 200
    assert log["error"]
    assert len(upstream_calls(gateway)) == 1


def test_completions_stream_cut(gateway, client):
    gateway.fault(count=1, path="/v1/completions", cut_after=1)
    stream = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="cut me short please", max_tokens=100, stream=True
    )
    texts = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            texts.append(chunk.choices[0].text)
    assert len(texts) == 1
    assert info.value.body["code"] == "upstream_stream_cut"


def test_responses_stream_cut_ends_with_an_error_event(gateway, client):
    gateway.fault(count=1, path="/v1/responses", cut_after=2)
    events = []
    try:
        for event in client.responses.create(model="gpt-4o-mini", input="cut the response", stream=True):
            events.append(event)
    except openai.APIError as err:  # an SDK may also raise on the error event
        assert (err.body or {}).get("code") == "upstream_stream_cut"
    else:
        last = events[-1].model_dump()
        last = last.get("data") or last  # older SDKs wrap an unknown event as {"event", "data"}
        assert last["type"] == "error"
        assert last["code"] == "upstream_stream_cut"
        assert "ended the stream" in last["message"]
        events.pop()
    types = [e.type for e in events]
    assert types.count("response.output_text.delta") == 2
    assert "response.completed" not in types


# ---- two channels: failover


@pytest.fixture
def backup_channel(gateway, make_channel):
    """A second channel on the same sandbox, same key and models, same priority as the demo channel."""
    return make_channel(
        name="sandbox-backup",
        models=["gpt-4o-mini", "text-embedding-3-small"],
        priority=0,
    )


def test_failover_hides_a_single_500(gateway, client, backup_channel):
    prompt = "survive one failure"
    gateway.fault(count=1, status=500, path=CHAT)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
    )
    assert raw.status_code == 200
    assert raw.parse().choices[0].message.content == sandbox_reply(prompt)

    calls = upstream_calls(gateway)
    assert [c["path"] for c in calls] == [CHAT, CHAT]
    assert calls[0]["body_json"] == calls[1]["body_json"]

    log = gateway.log(raw.headers["x-uniapi-request-id"])
    assert log["status"] == 200
    attempts = log["attempts"]
    assert len(attempts) == 2
    assert attempts[0]["status"] == 500 and "500" in attempts[0]["error"]
    assert attempts[1]["status"] == 200 and attempts[1]["error"] is None
    assert {a["channel"] for a in attempts} == {"sandbox-openai", "sandbox-backup"}
    assert log["channel_id"] == attempts[1]["channel_id"]


def test_failover_on_a_stream(gateway, client, backup_channel):
    prompt = "stream after a failure"
    gateway.fault(count=1, status=502, path=CHAT)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], stream=True
    )
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == sandbox_reply(prompt)
    log = gateway.log(raw.headers["x-uniapi-request-id"])
    assert [a["status"] for a in log["attempts"]] == [502, 200]
    assert log["outcome"] == "complete"


def test_failover_after_a_429(gateway, client, backup_channel):
    gateway.fault(count=1, status=429, path="/v1/embeddings")
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="rate limited once")
    assert len(raw.parse().data) == 1
    log = gateway.log(raw.headers["x-uniapi-request-id"])
    assert [a["status"] for a in log["attempts"]] == [429, 200]


def test_every_channel_failing_is_a_502_with_two_attempts(gateway, client, backup_channel):
    gateway.fault(count=2, status=500, path=CHAT)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.status_code == 502
    assert len(upstream_calls(gateway)) == 2
    log = gateway.log(info.value.response.headers["x-uniapi-request-id"])
    assert [a["status"] for a in log["attempts"]] == [500, 500]
    assert {a["channel"] for a in log["attempts"]} == {"sandbox-openai", "sandbox-backup"}


def test_a_model_only_one_channel_serves_does_not_fail_over(gateway, client, backup_channel):
    # the backup channel does not serve gpt-4o: one attempt only
    gateway.fault(count=1, status=500, path=CHAT)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert len(upstream_calls(gateway)) == 1


def test_client_errors_do_not_fail_over(gateway, client, backup_channel):
    gateway.fault(count=1, status=400, path=CHAT)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(upstream_calls(gateway)) == 1


def test_removed_channel_is_no_longer_used(gateway, client, make_channel):
    channel = make_channel(name="sandbox-temporary", models=["gpt-4o-mini"])
    assert gateway.admin("DELETE", f"/channels/{channel['id']}").status == 204
    gateway.fault(count=1, status=500, path=CHAT)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(upstream_calls(gateway)) == 1
