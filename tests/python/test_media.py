"""Images (JSON and multipart) and audio (speech bytes, transcripts in every format) through the SDK,
including the upload checks the gateway makes before spending an upstream call."""

from __future__ import annotations

import base64
import re

import openai
import pytest

from conftest import SANDBOX_KEY, Gateway, make_png, make_wav

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def only_upstream_call(gateway: Gateway, path: str) -> dict:
    calls = gateway.journal()
    assert [c["path"] for c in calls] == [path], calls
    assert calls[0]["authorization"] == f"Bearer {SANDBOX_KEY}"
    return calls[0]


# ---- images


def test_image_generation_urls(gateway, client):
    prompt = "a lighthouse at dusk"
    result = client.images.generate(model="dall-e-3", prompt=prompt, n=2, size="1024x1024")
    assert len(result.data) == 2
    for i, image in enumerate(result.data):
        assert re.fullmatch(rf"https://sandbox\.invalid/images/[0-9a-f]{{16}}-{i}\.png", image.url), image.url
        assert image.revised_prompt == f"Sandbox rendering of: {prompt}"
        assert image.b64_json is None
    assert only_upstream_call(gateway, "/v1/images/generations")["body_json"] == {
        "model": "dall-e-3",
        "prompt": prompt,
        "n": 2,
        "size": "1024x1024",
    }


def test_image_generation_b64_json(gateway, client):
    result = client.images.generate(model="dall-e-2", prompt="a cat", response_format="b64_json")
    assert len(result.data) == 1
    png = base64.b64decode(result.data[0].b64_json)
    assert png.startswith(PNG_SIGNATURE)
    assert result.data[0].url is None
    assert only_upstream_call(gateway, "/v1/images/generations")["body_json"] == {
        "model": "dall-e-2",
        "prompt": "a cat",
        "response_format": "b64_json",
    }


def test_image_edit_multipart(gateway, client):
    image = make_png(64, 64)
    mask = make_png(64, 64, (0, 0, 0, 0))
    result = client.images.edit(
        model="dall-e-2",
        image=("photo.png", image, "image/png"),
        mask=("mask.png", mask, "image/png"),
        prompt="add a red hat",
        n=2,
        size="256x256",
        response_format="b64_json",
    )
    assert len(result.data) == 2
    assert all(base64.b64decode(d.b64_json).startswith(PNG_SIGNATURE) for d in result.data)
    assert result.data[0].revised_prompt == "Sandbox rendering of: add a red hat"

    call = only_upstream_call(gateway, "/v1/images/edits")
    assert call["content_type"].startswith("multipart/form-data; boundary=")
    assert call["multipart_fields"] == {
        "model": "dall-e-2",
        "image": f"<file photo.png, {len(image)} bytes>",
        "mask": f"<file mask.png, {len(mask)} bytes>",
        "prompt": "add a red hat",
        "n": "2",
        "size": "256x256",
        "response_format": "b64_json",
    }


def test_image_edit_without_prompt_is_refused_locally(gateway, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.post(
            "/images/edits",
            cast_to=object,
            body={"model": "dall-e-2"},
            files=[("image", ("photo.png", make_png(8, 8), "image/png"))],
            options={"headers": {"Content-Type": "multipart/form-data"}},
        )
    assert info.value.status_code == 400
    assert info.value.param == "prompt"
    assert gateway.journal() == []


def test_image_variation_of_a_square_png(gateway, client):
    image = make_png(32, 32)
    result = client.images.create_variation(image=("square.png", image, "image/png"), n=3, size="256x256")
    assert len(result.data) == 3
    assert all(d.url.startswith("https://sandbox.invalid/images/") for d in result.data)

    call = only_upstream_call(gateway, "/v1/images/variations")
    fields = call["multipart_fields"]
    # no model was sent: the gateway routed on dall-e-2 and named it in the upstream form
    assert fields == {
        "model": "dall-e-2",
        "image": f"<file square.png, {len(image)} bytes>",
        "n": "3",
        "size": "256x256",
    }


@pytest.mark.parametrize(
    "image, extra, param",
    [
        pytest.param(("wide.png", make_png(40, 20), "image/png"), {}, "image", id="non-square png"),
        pytest.param(("fake.png", b"GIF89a" + b"\x00" * 64, "image/png"), {}, "image", id="not a png"),
        pytest.param(("broken.png", make_png(16, 16)[:40], "image/png"), {}, "image", id="truncated png"),
        pytest.param(("square.png", make_png(16, 16), "image/png"), {"n": 11}, "n", id="n=11"),
        pytest.param(("square.png", make_png(16, 16), "image/png"), {"size": "300x300"}, "size", id="size 300x300"),
    ],
)
def test_bad_variation_never_reaches_the_upstream(gateway, client, image, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.images.create_variation(image=image, **extra)
    err = info.value
    assert err.status_code == 400
    assert err.type == "invalid_request_error"
    assert err.param == param
    assert isinstance(err.body, dict) and err.body["message"]
    assert gateway.journal() == [], "a refused upload must not cost an upstream call"

    log = gateway.log(err.response.headers["x-uniapi-request-id"])
    assert log["outcome"] == "rejected"
    assert log["status"] == 400
    assert log["attempts"] == []


# ---- audio


def test_speech_returns_audio_bytes(gateway, client):
    text = "Hello from the gateway"
    raw = client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input=text)
    assert raw.headers["content-type"] == "audio/mpeg"
    audio = raw.content
    assert audio.startswith(b"ID3")
    assert len(audio) == 10 + 32 * len(text)
    assert only_upstream_call(gateway, "/v1/audio/speech")["body_json"] == {
        "model": "tts-1",
        "voice": "alloy",
        "input": text,
    }


def test_speech_wav_format(client):
    text = "wave"
    raw = client.audio.speech.with_raw_response.create(
        model="tts-1", voice="nova", input=text, response_format="wav", speed=1.25
    )
    assert raw.headers["content-type"] == "audio/wav"
    audio = raw.content
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    assert len(audio) == 44 + 32 * len(text)


def test_speech_streaming_response(client):
    text = "streamed speech"
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format="flac"
    ) as response:
        assert response.headers["content-type"] == "audio/flac"
        audio = b"".join(response.iter_bytes())
    assert audio.startswith(b"fLaC")
    assert len(audio) == 4 + 32 * len(text)


WAV = make_wav(1.5)


def transcript_text(file_name: str, size: int) -> str:
    return f"Sandbox transcript of {file_name} ({size} bytes)"


def test_transcription_json(gateway, client):
    result = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", WAV, "audio/wav"))
    assert result.text == transcript_text("speech.wav", len(WAV))

    call = only_upstream_call(gateway, "/v1/audio/transcriptions")
    assert call["multipart_fields"] == {
        "model": "whisper-1",
        "file": f"<file speech.wav, {len(WAV)} bytes>",
    }


def test_transcription_text(client):
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", WAV, "audio/wav"), response_format="text"
    )
    assert isinstance(result, str)
    assert result.strip() == transcript_text("speech.wav", len(WAV))


def test_transcription_srt(client):
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", WAV, "audio/wav"), response_format="srt"
    )
    assert isinstance(result, str)
    seconds = max(1, len(WAV) // 16_000)
    assert result == f"1\n00:00:00,000 --> 00:00:{seconds:02},000\n{transcript_text('speech.wav', len(WAV))}\n\n"


def test_transcription_vtt(client):
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", WAV, "audio/wav"), response_format="vtt"
    )
    assert isinstance(result, str)
    seconds = max(1, len(WAV) // 16_000)
    assert result == f"WEBVTT\n\n00:00:00.000 --> 00:00:{seconds:02}.000\n{transcript_text('speech.wav', len(WAV))}\n\n"


def test_transcription_verbose_json(gateway, client):
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=("speech.wav", WAV, "audio/wav"),
        response_format="verbose_json",
        language="de",
        timestamp_granularities=["word", "segment"],
    )
    text = transcript_text("speech.wav", len(WAV))
    assert result.text == text
    assert result.language == "de"
    assert result.duration == float(max(1, len(WAV) // 16_000))
    assert len(result.segments) == 1
    assert result.segments[0].text.strip() == text
    assert [w.word for w in result.words] == text.split()

    fields = only_upstream_call(gateway, "/v1/audio/transcriptions")["multipart_fields"]
    assert fields["response_format"] == "verbose_json"
    assert fields["language"] == "de"
    assert fields["timestamp_granularities[]"] == ["word", "segment"]


def test_translation(gateway, client):
    result = client.audio.translations.create(model="whisper-1", file=("rede.wav", WAV, "audio/wav"))
    assert result.text == transcript_text("rede.wav", len(WAV))
    only_upstream_call(gateway, "/v1/audio/translations")


def test_translation_verbose_json(client):
    result = client.audio.translations.create(
        model="whisper-1", file=("rede.wav", WAV, "audio/wav"), response_format="verbose_json"
    )
    assert result.text == transcript_text("rede.wav", len(WAV))
    assert result.language == "english"
    assert len(result.segments) == 1


def test_transcription_without_file_is_refused_locally(gateway, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.post(
            "/audio/transcriptions",
            cast_to=object,
            body={"model": "whisper-1"},
            files=[("other", ("x.txt", b"hello", "text/plain"))],
            options={"headers": {"Content-Type": "multipart/form-data"}},
        )
    assert info.value.param == "file"
    assert gateway.journal() == []
