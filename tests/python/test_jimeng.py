"""Jimeng and fal models through the OpenAI images route of the real binary (`serve --demo`), called with
the official `openai` SDK: the gateway signs Volcengine calls (verified by the sandbox), waits for the
upstream task and answers in the OpenAI images shape, charged exactly once; bad input costs nothing."""

from __future__ import annotations

import base64

import openai
import pytest

JIMENG_PER_IMAGE = 30_000_000  # jimeng-4.0, USD 0.03 per image
FAL_PER_CALL = 25_000_000  # fal-ai/flux-1/dev


def test_jimeng_images_in_the_openai_shape_charged_per_image(gateway, client):
    gateway.sandbox_config(task_ms=300)
    before = gateway.balance_nano()
    result = client.images.generate(model="jimeng-4.0", prompt="一只猫 on a roof", n=2, size="1024x1024")
    assert len(result.data) == 2 and all(d.url.startswith("https://") for d in result.data)
    assert result.created > 0
    assert before - gateway.balance_nano() == 2 * JIMENG_PER_IMAGE
    calls = [r for r in gateway.journal() if r["path"] == "/"]
    submit = calls[0]
    assert submit["authorization"].startswith("HMAC-SHA256 Credential=sk-sandbox-demo-upstream/")
    assert submit["body_json"]["req_key"] == "jimeng_t2i_v40"  # from the channel's model_map
    assert submit["body_json"]["width"] == 1024 and submit["body_json"]["prompt"] == "一只猫 on a roof"
    gateway.ledger_reconciles()


def test_jimeng_b64_json_answers_images(gateway, client):
    gateway.sandbox_config(task_ms=200)
    result = client.images.generate(model="jimeng-4.0", prompt="a lighthouse", response_format="b64_json")
    assert len(result.data) == 1
    assert base64.b64decode(result.data[0].b64_json).startswith(b"\x89PNG")


def test_a_fal_model_through_the_openai_sdk(gateway, client):
    gateway.sandbox_config(task_ms=300)
    before = gateway.balance_nano()
    result = client.images.generate(model="fal-ai/flux-1/dev", prompt="a red fox", n=2)
    assert len(result.data) == 2 and all(d.url.startswith("https://") for d in result.data)
    assert before - gateway.balance_nano() == FAL_PER_CALL
    submitted = [r for r in gateway.journal() if r["path"] == "/fal-ai/flux-1/dev"]
    assert submitted[0]["body_json"]["num_images"] == 2
    assert submitted[0]["authorization"] == "Key sk-sandbox-demo-upstream"


def test_bad_input_and_failed_tasks_cost_nothing(gateway, client):
    gateway.sandbox_config(task_ms=200)
    before = gateway.balance_nano()
    gateway.clear_journal()
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="jimeng-4.0", prompt="x", size="huge")
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="jimeng-4.0", prompt="x", n=0)
    assert gateway.journal() == []
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="jimeng-4.0", prompt="please reject this")
    with pytest.raises(openai.APIStatusError) as failed:
        client.images.generate(model="jimeng-4.0", prompt="this will fail")
    assert failed.value.status_code == 502
    with pytest.raises(openai.APIStatusError):
        client.images.generate(model="fal-ai/flux-1/dev", prompt="this will fail")
    assert gateway.balance_nano() == before
    gateway.ledger_reconciles()


def test_openai_image_models_still_go_to_openai_channels(gateway, client):
    result = client.images.generate(model="dall-e-2", prompt="a boat")
    assert result.data
    assert not [r for r in gateway.journal() if r["path"] == "/"]
