"""Chat completions through the official SDK: plain, streamed, n, tools, sampling fields, aliases —
and, through the sandbox journal, exactly what the upstream received."""

from __future__ import annotations

import json
import time

from conftest import DEMO_KEY, SANDBOX_KEY, Gateway, prompt_tokens, sandbox_reply


def only_upstream_call(gateway: Gateway, path: str = "/v1/chat/completions") -> dict:
    calls = gateway.journal()
    assert [c["path"] for c in calls] == [path], calls
    call = calls[0]
    assert call["method"] == "POST"
    # the channel's key, never the caller's
    assert call["authorization"] == f"Bearer {SANDBOX_KEY}"
    assert DEMO_KEY not in json.dumps(call)
    return call


def test_plain_chat(gateway, client):
    prompt = "Hello from the Python suite"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": prompt},
    ]
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert raw.http_request.headers["authorization"] == f"Bearer {DEMO_KEY}"
    assert raw.headers["x-uniapi-request-id"].startswith("req_")
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == sandbox_reply(prompt)
    assert completion.usage.prompt_tokens == prompt_tokens(len("Be brief.") + len(prompt))
    assert completion.usage.completion_tokens == len(choice.message.content.split())
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens

    call = only_upstream_call(gateway)
    assert call["body_json"] == {"model": "gpt-4o-mini", "messages": messages}
    assert call["content_type"].startswith("application/json")

    log = gateway.log(raw.headers["x-uniapi-request-id"])
    assert log["path"] == "/v1/chat/completions"
    assert log["model"] == "gpt-4o-mini"
    assert log["upstream_model"] == "gpt-4o-mini"
    assert log["status"] == 200
    assert log["stream"] is False
    assert log["channel_id"] == gateway.channel_id("sandbox-openai")
    assert [(a["channel"], a["status"], a["error"]) for a in log["attempts"]] == [("sandbox-openai", 200, None)]
    assert SANDBOX_KEY not in json.dumps(log)


# Regression: with an upstream Content-Length, hyper stops polling the body once that many bytes are
# written, so the relay must recognise the end itself, or every JSON answer is logged as "client_gone".
def test_log_outcome_of_a_fully_read_json_answer_is_complete(gateway, client):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "log me"}]
    )
    assert raw.parse().choices[0].message.content == sandbox_reply("log me")
    log = gateway.log(raw.headers["x-uniapi-request-id"])
    assert log["status"] == 200
    assert (log["outcome"], log["error"]) == ("complete", None)


def test_streamed_chat_reassembles_to_the_plain_answer(gateway, client):
    messages = [{"role": "user", "content": "Stream me a reply about rivers and lakes"}]
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    gateway.clear_journal()

    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, stream=True)
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 4, f"the answer arrived as {len(content_chunks)} content events"
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    # no usage chunk unless asked for
    assert all(c.usage is None for c in chunks)

    call = only_upstream_call(gateway)
    # uniapi asks the upstream for its usage count (and hides that chunk from this client)
    assert call["body_json"] == {
        "model": "gpt-4o-mini",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    log = gateway.log(raw.headers["x-uniapi-request-id"])
    assert log["stream"] is True
    assert log["outcome"] == "complete"
    assert log["status"] == 200


def test_stream_chunks_are_relayed_as_they_arrive(gateway, client):
    """The gateway must not buffer a stream: with the upstream pacing its chunks, the client sees
    them spread over time, not all at once at the end."""
    gateway.sandbox_config(chunk_delay_ms=100)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a slow and steady stream of words for timing"}],
        stream=True,
    )
    arrivals = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
    assert len(arrivals) == 8
    # 8 chunks, 100 ms apart upstream: about 700 ms between the first and the last
    assert arrivals[-1] - arrivals[0] >= 0.4, arrivals


def test_stream_with_include_usage_ends_with_a_usage_chunk(gateway, client):
    prompt = "Count my tokens please"
    messages = [{"role": "user", "content": prompt}]
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == sandbox_reply(prompt)
    assert last.usage.prompt_tokens == prompt_tokens(len(prompt))
    assert last.usage.completion_tokens == len(text.split())
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert [c for c in chunks[:-1] if c.usage is not None] == []

    call = only_upstream_call(gateway)
    assert call["body_json"] == {
        "model": "gpt-4o-mini",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_n_two_gives_two_choices(gateway, client):
    prompt = "Give me two answers"
    completion = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": prompt}], n=2
    )
    assert [c.index for c in completion.choices] == [0, 1]
    assert [c.message.content for c in completion.choices] == [sandbox_reply(prompt)] * 2
    assert completion.usage.completion_tokens == 2 * len(sandbox_reply(prompt).split())
    assert only_upstream_call(gateway)["body_json"]["n"] == 2


def test_tool_choice_comes_back_as_a_tool_call(gateway, client):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "description": "Current time in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        },
    ]
    tool_choice = {"type": "function", "function": {"name": "get_weather"}}
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=tools, tool_choice=tool_choice
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    # the second tool: tool_choice reached the upstream
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {}

    upstream = only_upstream_call(gateway)
    assert upstream["body_json"] == {
        "model": "gpt-4o-mini",
        "messages": messages,
        "tools": tools,
        "tool_choice": tool_choice,
    }


def test_streamed_tool_call(client):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "look it up"}],
            tools=tools,
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "lookup"
    assert "".join(tc.function.arguments or "" for tc in calls) == "{}"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_sampling_fields_reach_the_upstream_unchanged(gateway, client):
    messages = [{"role": "user", "content": "Answer in JSON with many words please"}]
    sent = {
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_logprobs": 2,
        "temperature": 0.25,
        "top_p": 0.9,
        "max_tokens": 3,
        "seed": 42,
        "stop": ["\n\n"],
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "user": "pytest-user",
        "metadata": {"suite": "python"},
        "logit_bias": {"50256": -100},
    }
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=messages, **sent)
    choice = completion.choices[0]
    # max_tokens was honoured upstream: three words and finish_reason "length"
    assert choice.finish_reason == "length"
    assert choice.message.content == "Sandbox reply to:"
    assert completion.usage.completion_tokens == 3

    upstream = only_upstream_call(gateway)
    assert upstream["body_json"] == {"model": "gpt-4o-mini", "messages": messages, **sent}


def test_max_completion_tokens(client):
    completion = client.chat.completions.create(
        model="gpt-4.1-mini",
        messages=[{"role": "user", "content": "long answer please"}],
        max_completion_tokens=5,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Sandbox reply to: long answer"


def test_alias_is_mapped_to_the_upstream_model(gateway, client):
    prompt = "Which model are you?"
    messages = [{"role": "user", "content": prompt}]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini-latest", messages=messages, temperature=0.5
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == sandbox_reply(prompt)
    assert completion.choices[0].finish_reason == "stop"

    upstream = only_upstream_call(gateway)
    # only the model name changes on the way up
    assert upstream["body_json"] == {"model": "gpt-4o-mini", "messages": messages, "temperature": 0.5}

    log = gateway.log(raw.headers["x-uniapi-request-id"])
    assert log["model"] == "gpt-4o-mini-latest"
    assert log["upstream_model"] == "gpt-4o-mini"


def test_alias_stream(gateway, client):
    prompt = "Stream through the alias"
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini-latest", messages=[{"role": "user", "content": prompt}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == sandbox_reply(prompt)
    assert only_upstream_call(gateway)["body_json"]["model"] == "gpt-4o-mini"


def test_multimodal_content_parts_pass_through(gateway, client):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "text", "text": "this picture"},
            ],
        }
    ]
    completion = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert completion.choices[0].message.content == sandbox_reply("Describe this picture")
    assert only_upstream_call(gateway)["body_json"] == {"model": "gpt-4o", "messages": messages}


def test_unicode_survives_the_round_trip(gateway, client):
    prompt = "Grüße, 世界 — émoji 🚀 and \"quotes\" \\ backslash"
    messages = [{"role": "user", "content": prompt}]
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert completion.choices[0].message.content == sandbox_reply(prompt)
    assert only_upstream_call(gateway)["body_json"] == {"model": "gpt-4o-mini", "messages": messages}
