"""What the relay does around a request: model mapping in JSON and multipart bodies, which client
headers reach the upstream, concurrent streams, bad channel keys, disabled accounts, and how the
request log records a client that goes away."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from conftest import DEMO_KEY, SANDBOX_KEY, make_wav, sandbox_reply

CHAT = "/v1/chat/completions"


def test_alias_replaces_only_the_top_level_model(gateway, client):
    # the alias also appears inside the content and in a nested "model" key: those stay as sent
    content = 'Please repeat "model": "gpt-4o-mini-latest" verbatim'
    messages = [{"role": "user", "content": content}]
    metadata = {"model": "gpt-4o-mini-latest"}
    completion = client.chat.completions.create(model="gpt-4o-mini-latest", messages=messages, metadata=metadata)
    assert completion.choices[0].message.content == sandbox_reply(content)
    (call,) = gateway.journal()
    assert call["body_json"] == {"model": "gpt-4o-mini", "messages": messages, "metadata": metadata}


def test_alias_on_the_responses_api(gateway, client):
    response = client.responses.create(model="gpt-4o-mini-latest", input="alias on responses")
    assert response.output_text == sandbox_reply("alias on responses")
    (call,) = gateway.journal()
    assert call["body_json"] == {"model": "gpt-4o-mini", "input": "alias on responses"}


def test_alias_in_a_multipart_form_rebuilds_the_form(gateway, make_channel):
    make_channel(name="sandbox-whisper-alias", models=[], model_map={"speech-to-text": "whisper-1"})
    # an alias is priced under the name the client uses
    assert gateway.admin("PUT", "/prices/speech-to-text", {"per_audio_minute": 0.006}).status == 200
    client = gateway.client()
    audio = make_wav(0.25) + bytes(range(256))  # binary bytes after the header must survive the rebuild
    result = client.audio.transcriptions.create(
        model="speech-to-text",
        file=("clip.wav", audio, "audio/wav"),
        response_format="verbose_json",
        prompt="names: Åsa, Zoë",
        temperature=0.2,
    )
    assert result.text == f"Sandbox transcript of clip.wav ({len(audio)} bytes)"
    (call,) = gateway.journal()
    assert call["content_type"].startswith("multipart/form-data; boundary=")
    assert call["multipart_fields"] == {
        "model": "whisper-1",
        "file": f"<file clip.wav, {len(audio)} bytes>",
        "response_format": "verbose_json",
        "prompt": "names: Åsa, Zoë",
        "temperature": "0.2",
    }
    assert gateway.admin("DELETE", "/prices/speech-to-text").status == 204


def test_query_string_is_forwarded(gateway, client):
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}], extra_query={"trace": "on"}
    )
    (call,) = gateway.journal()
    assert call["path"] == CHAT
    assert call["query"] == "trace=on"


def test_client_headers_do_not_reach_the_upstream(gateway, client):
    # the sandbox would fail this call if the header were relayed
    completion = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "headers"}],
        extra_headers={"x-sandbox-fail-status": "500", "OpenAI-Organization": "org-client"},
    )
    assert completion.choices[0].message.content == sandbox_reply("headers")
    (call,) = gateway.journal()
    assert call["authorization"] == f"Bearer {SANDBOX_KEY}"


def test_concurrent_streams_do_not_mix(gateway, client):
    gateway.sandbox_config(chunk_delay_ms=5)
    prompts = [f"concurrent stream number {i}" for i in range(8)]

    def run(prompt: str) -> str:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        answers = list(pool.map(run, prompts))
    assert answers == [sandbox_reply(p) for p in prompts]
    assert len(gateway.journal()) == len(prompts)


def test_client_leaving_mid_stream_is_logged_as_client_gone(gateway, client):
    gateway.sandbox_config(chunk_delay_ms=150)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "I will not wait for this"}], stream=True
    )
    stream = raw.parse()
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    stream.close()

    log = gateway.log(raw.headers["x-uniapi-request-id"], timeout=10)
    assert log["outcome"] == "client_gone"
    assert log["stream"] is True
    assert log["status"] == 200


def test_upstream_401_disables_the_channel_key_and_fails_over(gateway, client, make_channel):
    bad = make_channel(
        name="sandbox-bad-key",
        keys=["sk-not-accepted-by-the-sandbox-1234"],
        models=["gpt-4o-mini"],
        priority=10,  # tried before the demo channel
    )
    prompt = "first through the bad channel"
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
    )
    assert raw.parse().choices[0].message.content == sandbox_reply(prompt)

    calls = gateway.journal()
    assert [c["authorization"] for c in calls] == [
        "Bearer sk-not-accepted-by-the-sandbox-1234",
        f"Bearer {SANDBOX_KEY}",
    ]
    assert all(DEMO_KEY not in json.dumps(c) for c in calls)
    log = gateway.log(raw.headers["x-uniapi-request-id"])
    assert [(a["channel"], a["status"]) for a in log["attempts"]] == [
        ("sandbox-bad-key", 401),
        ("sandbox-openai", 200),
    ]
    assert log["attempts"][0]["key_hint"].endswith("1234")

    # the rejected key is switched off and the admin API says why
    deadline = time.monotonic() + 5
    while True:
        keys = gateway.admin("GET", f"/channels/{bad['id']}").json()["keys"]
        if keys[0]["enabled"] is False and keys[0]["disabled_reason"]:
            break
        assert time.monotonic() < deadline, keys
        time.sleep(0.05)
    assert "1234" in keys[0]["key"] and "not-accepted" not in keys[0]["key"]

    # the next call does not send the dead key upstream again
    gateway.clear_journal()
    assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}]).choices
    assert [c["authorization"] for c in gateway.journal()] == [f"Bearer {SANDBOX_KEY}"]

    # the gateway's own output names the key by its tail only
    output = gateway.output()
    assert "sk-not-accepted-by-the-sandbox-1234" not in output
    assert SANDBOX_KEY not in output


def test_disabled_user(gateway, make_key):
    created = gateway.admin("POST", "/users", {"name": "pytest-suspended", "balance_usd": 1.0})
    assert created.status == 201, created.body
    user = created.json()
    try:
        key = make_key(user_id=user["id"])
        client = gateway.client(key["key"])
        assert client.models.list().data

        assert gateway.admin("PATCH", f"/users/{user['id']}", {"enabled": False}).status == 200
        with pytest.raises(openai.PermissionDeniedError) as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert info.value.code == "account_disabled"
        assert gateway.journal() == []
    finally:
        assert gateway.admin("DELETE", f"/users/{user['id']}").status == 204
    # deleting the user deletes its keys
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
