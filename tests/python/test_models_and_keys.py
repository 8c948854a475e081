"""The model list and per-key model restrictions, with keys created through the admin API."""

from __future__ import annotations

import openai
import pytest

DEMO_MODELS = {
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "omni-moderation-latest",
    "dall-e-2",
    "dall-e-3",
    "whisper-1",
    "tts-1",
    "gpt-4o-mini-latest",
}


def test_models_list_has_the_demo_models(gateway, client):
    models = list(client.models.list())
    ids = [m.id for m in models]
    assert set(ids) == DEMO_MODELS
    assert len(ids) == len(set(ids))
    assert all(m.object == "model" and m.owned_by and m.created > 0 for m in models)
    # answered by the gateway itself, not relayed
    assert gateway.journal() == []


def test_models_retrieve(client):
    model = client.models.retrieve("gpt-4o-mini")
    assert model.id == "gpt-4o-mini"
    assert model.object == "model"
    assert model.created > 0
    alias = client.models.retrieve("gpt-4o-mini-latest")
    assert alias.id == "gpt-4o-mini-latest"


def test_models_retrieve_unknown(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-does-not-exist")
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"


def test_restricted_key_sees_and_uses_only_its_models(gateway, make_key):
    key = make_key(models=["gpt-4o-mini"])
    assert key["key"].startswith("sk-")
    assert key["models"] == ["gpt-4o-mini"]
    client = gateway.client(key["key"])

    assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"

    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "allowed"}]
    )
    assert completion.choices[0].message.content.startswith("Sandbox reply to: allowed")

    gateway.clear_journal()
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "not allowed"}])
    assert info.value.status_code == 403
    assert info.value.code == "model_not_allowed"
    assert info.value.param == "model"
    assert gateway.journal() == [], "a refused model must not reach the upstream"

    # the alias is a model name of its own: allowing gpt-4o-mini does not allow it
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(
            model="gpt-4o-mini-latest", messages=[{"role": "user", "content": "alias"}]
        )
    with pytest.raises(openai.PermissionDeniedError):
        client.embeddings.create(model="text-embedding-3-small", input="x")

    # a model hidden from the key is "not found" through the model endpoints, like an unknown one
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


def test_key_with_several_models(gateway, make_key):
    key = make_key(models=["gpt-4o", "text-embedding-3-small"])
    client = gateway.client(key["key"])
    assert sorted(m.id for m in client.models.list()) == ["gpt-4o", "text-embedding-3-small"]
    assert len(client.embeddings.create(model="text-embedding-3-small", input="x").data) == 1
