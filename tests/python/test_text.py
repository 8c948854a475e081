"""Legacy completions, the Responses API, embeddings and moderations through the official SDK."""

from __future__ import annotations

import math

import pytest

from conftest import SANDBOX_KEY, Gateway, prompt_tokens, sandbox_reply


def upstream_body(gateway: Gateway, path: str) -> dict:
    calls = gateway.journal()
    assert [c["path"] for c in calls] == [path], calls
    assert calls[0]["authorization"] == f"Bearer {SANDBOX_KEY}"
    return calls[0]["body_json"]


# ---- completions (legacy)


def test_completion(gateway, client):
    prompt = "Say this is a test"
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt, max_tokens=50)
    assert completion.object == "text_completion"
    assert completion.model == "gpt-3.5-turbo-instruct"
    assert len(completion.choices) == 1
    assert completion.choices[0].text == sandbox_reply(prompt, "Sandbox completion of:")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == prompt_tokens(len(prompt))
    assert completion.usage.completion_tokens == len(completion.choices[0].text.split())
    assert upstream_body(gateway, "/v1/completions") == {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": prompt,
        "max_tokens": 50,
    }


def test_completion_length_limit_and_several_prompts(client):
    completion = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=["first prompt", "second prompt"], max_tokens=4
    )
    assert [c.text for c in completion.choices] == [
        "Sandbox completion of: first",
        "Sandbox completion of: second",
    ]
    assert [c.finish_reason for c in completion.choices] == ["length", "length"]


def test_completion_stream(gateway, client):
    prompt = "Stream a legacy completion about the sea"
    plain = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt, max_tokens=100)
    gateway.clear_journal()

    chunks = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt=prompt,
            max_tokens=100,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(texts) >= 4, f"only {len(texts)} text events"
    assert "".join(texts) == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert upstream_body(gateway, "/v1/completions") == {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": prompt,
        "max_tokens": 100,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# ---- responses


def test_response(gateway, client):
    prompt = "Tell me about the Responses API"
    instructions = "Answer briefly."
    response = client.responses.create(model="gpt-4o", input=prompt, instructions=instructions)
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "gpt-4o"
    assert response.output_text == sandbox_reply(prompt)
    assert response.instructions == instructions
    assert response.usage.input_tokens == prompt_tokens(len(instructions) + len(prompt))
    assert response.usage.output_tokens == len(response.output_text.split())
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert upstream_body(gateway, "/v1/responses") == {
        "model": "gpt-4o",
        "input": prompt,
        "instructions": instructions,
    }


def test_response_with_message_items_and_tool(client):
    response = client.responses.create(
        model="gpt-4o-mini",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "weather in Oslo?"}]}],
        tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}],
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].arguments == "{}"


def test_response_stream(gateway, client):
    prompt = "Stream the Responses API answer"
    events = list(client.responses.create(model="gpt-4o-mini", input=prompt, stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 4, types
    assert "".join(deltas) == sandbox_reply(prompt)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = [e for e in events if e.type == "response.output_text.done"]
    assert [e.text for e in done] == [sandbox_reply(prompt)]

    completed = events[-1].response
    assert completed.status == "completed"
    assert completed.output_text == sandbox_reply(prompt)
    assert completed.usage.input_tokens == prompt_tokens(len(prompt))
    assert completed.usage.output_tokens == len(sandbox_reply(prompt).split())
    assert upstream_body(gateway, "/v1/responses") == {"model": "gpt-4o-mini", "input": prompt, "stream": True}


def test_response_incomplete_at_max_output_tokens(client):
    prompt = "go on and on and on and on"
    response = client.responses.create(model="gpt-4o-mini", input=prompt, max_output_tokens=16)
    assert len(sandbox_reply(prompt).split()) > 16
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == " ".join(sandbox_reply(prompt).split()[:16])


# ---- embeddings


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


def test_embedding_default_base64_is_decoded_by_the_sdk(gateway, client):
    text = "The quick brown fox"
    result = client.embeddings.create(model="text-embedding-3-small", input=text)
    # the SDK asked for base64 and the gateway passed that request and answer through untouched
    assert upstream_body(gateway, "/v1/embeddings") == {
        "model": "text-embedding-3-small",
        "input": text,
        "encoding_format": "base64",
    }
    assert result.model == "text-embedding-3-small"
    assert len(result.data) == 1
    vector = result.data[0].embedding
    assert isinstance(vector, list) and len(vector) == 8
    assert all(isinstance(v, float) for v in vector)
    assert abs(norm(vector) - 1.0) < 1e-4
    assert result.usage.prompt_tokens == prompt_tokens(len(text))

    gateway.clear_journal()
    floats = client.embeddings.create(model="text-embedding-3-small", input=text, encoding_format="float")
    assert upstream_body(gateway, "/v1/embeddings") == {
        "model": "text-embedding-3-small",
        "input": text,
        "encoding_format": "float",
    }
    # same deterministic vector either way
    assert floats.data[0].embedding == pytest.approx(vector, rel=1e-5, abs=1e-7)


def test_embedding_list_input_and_dimensions(gateway, client):
    inputs = ["alpha", "beta", "gamma"]
    result = client.embeddings.create(
        model="text-embedding-3-small", input=inputs, dimensions=16, encoding_format="float"
    )
    assert [d.index for d in result.data] == [0, 1, 2]
    assert all(len(d.embedding) == 16 for d in result.data)
    assert all(abs(norm(d.embedding) - 1.0) < 1e-4 for d in result.data)
    vectors = [tuple(d.embedding) for d in result.data]
    assert len(set(vectors)) == 3
    assert result.usage.prompt_tokens == sum(prompt_tokens(len(i)) for i in inputs)
    assert upstream_body(gateway, "/v1/embeddings")["dimensions"] == 16


# ---- moderations


def test_moderation(gateway, client):
    result = client.moderations.create(
        model="omni-moderation-latest", input=["I will kill the process", "a pleasant afternoon"]
    )
    assert result.model == "omni-moderation-latest"
    assert [r.flagged for r in result.results] == [True, False]
    assert result.results[0].categories.violence is True
    assert result.results[0].category_scores.violence > 0.5
    assert result.results[1].categories.violence is False
    assert upstream_body(gateway, "/v1/moderations") == {
        "model": "omni-moderation-latest",
        "input": ["I will kill the process", "a pleasant afternoon"],
    }


def test_moderation_default_model_is_filled_in(gateway, client):
    result = client.moderations.create(input="nothing to see here")
    assert result.results[0].flagged is False
    # the client named no model: the gateway routed on its default and told the upstream
    assert upstream_body(gateway, "/v1/moderations") == {
        "model": "omni-moderation-latest",
        "input": "nothing to see here",
    }
