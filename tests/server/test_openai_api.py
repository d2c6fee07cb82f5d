"""OpenAI's API with the real `openai` client and raw HTTP, against a real server (api-compat §6, 23-28)."""

import base64
import io
import json

import httpx
import openai
import pytest
from PIL import Image

from tests.server.conftest import API_KEY, RunningServer


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(api_key=API_KEY, base_url=f"{server.url}/v1", max_retries=0)


def linked_image(content: str) -> tuple[str, Image.Image]:
    assert content.startswith("![image](") and content.endswith(")")
    url = content[len("![image](") : -1]
    return url, Image.open(io.BytesIO(httpx.get(url).content))


def data_uri(image_host: str, name: str = "ref.png") -> str:
    data = httpx.get(f"{image_host}/{name}").content
    return "data:application/octet-stream;base64," + base64.b64encode(data).decode()


def test_chat_text_to_image(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="flux-kontext-dev",
                                           messages=[{"role": "user", "content": "a red kite"}])
    assert reply.object == "chat.completion" and reply.choices[0].finish_reason == "stop"
    url, image = linked_image(reply.choices[0].message.content)
    assert image.size == (256, 256)  # 1024² at the test server's 1/16 area
    assert reply.choices[0].message.model_extra["images"][0]["image_url"]["url"] == url


@pytest.mark.parametrize("source", ["url", "data"])
def test_chat_with_an_image_part(client: openai.OpenAI, image_host: str, source: str) -> None:
    image_url = f"{image_host}/ref.png" if source == "url" else data_uri(image_host)
    reply = client.chat.completions.create(model="flux-kontext-pro", messages=[{"role": "user", "content": [
        {"type": "text", "text": "make it blue"},
        {"type": "image_url", "image_url": {"url": image_url, "detail": "auto"}},
    ]}])
    _, image = linked_image(reply.choices[0].message.content)
    assert image.size == (304, 208)  # the reference's preferred resolution (1248×832) at 1/16 area


def test_chat_is_an_editing_session(client: openai.OpenAI, image_host: str) -> None:
    first = client.chat.completions.create(model="flux-kontext-dev", messages=[
        {"role": "user", "content": [{"type": "text", "text": "a tower"},
                                     {"type": "image_url", "image_url": {"url": f"{image_host}/tall.jpg"}}]}])
    first_url, first_image = linked_image(first.choices[0].message.content)
    assert first_image.size == (176, 352)
    second = client.chat.completions.create(model="flux-kontext-dev", messages=[
        {"role": "user", "content": [{"type": "text", "text": "a tower"},
                                     {"type": "image_url", "image_url": {"url": f"{image_host}/tall.jpg"}}]},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "now make it taller"},
    ])
    second_url, second_image = linked_image(second.choices[0].message.content)
    assert second_url != first_url and second_image.size == first_image.size  # edited the previous output


def test_chat_streams_server_sent_events(client: openai.OpenAI, server: RunningServer) -> None:
    chunks = list(client.chat.completions.create(
        model="flux-kontext-dev", messages=[{"role": "user", "content": "a boat"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    linked_image(content)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 0
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", headers=server.headers, timeout=60, json={
            "model": "flux-kontext-dev", "stream": True,
            "messages": [{"role": "user", "content": "a slow boat"}], "size": "512x512"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    assert raw.startswith("data: ") and raw.endswith("data: [DONE]\n\n")
    assert all(line.startswith(("data: ", ": keep-alive")) for line in raw.split("\n\n") if line)


def test_keep_alive_comments_while_it_works(server: RunningServer, image_host: str) -> None:
    busy = {"input": {"prompt": "busy", "input_image": f"{image_host}/ref.png", "num_inference_steps": 50}}
    for _ in range(4):  # keep the worker busy for a while so the chat waits
        httpx.post(f"{server.url}/v1/models/black-forest-labs/flux-kontext-dev/predictions", json=busy,
                   headers=server.headers)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", headers=server.headers, timeout=120, json={
            "model": "flux-kontext-dev", "stream": True,
            "messages": [{"role": "user", "content": "wait for it"}]}) as response:
        raw = response.read().decode()
    assert ": keep-alive\n\n" in raw and "![image](" in raw


def test_bare_key_without_bearer_is_accepted(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/v1/models", headers={"Authorization": API_KEY})
    assert response.status_code == 200


def test_errors_map_to_the_sdk_exceptions(server: RunningServer, image_host: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="wrong", base_url=f"{server.url}/v1", max_retries=0).models.list()
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{server.url}/v1", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="dall-e-9", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as broken:
        client.chat.completions.create(model="flux-kontext-dev", messages=[{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": f"{image_host}/broken.png"}}]}])
    assert broken.value.param == "image" and "not a readable image" in broken.value.message
    with pytest.raises(openai.BadRequestError) as no_user:
        client.chat.completions.create(model="flux-kontext-dev", messages=[{"role": "system", "content": "x"}])
    assert no_user.value.param == "messages"
    raw = httpx.post(f"{server.url}/v1/images/generations", headers=server.headers, content=b"{oops")
    assert raw.status_code == 400 and set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_models_are_listed(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["flux-kontext-dev", "flux-kontext-pro", "flux-kontext-max"]
    assert client.models.retrieve("flux-kontext-max").owned_by == "black-forest-labs"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("flux-2")


def test_images_generate_as_url_and_b64(client: openai.OpenAI) -> None:
    as_url = client.images.generate(model="flux-kontext-dev", prompt="a lake", size="512x256")
    image = Image.open(io.BytesIO(httpx.get(as_url.data[0].url).content))
    assert image.size == (512, 256) and image.format == "PNG"  # explicit sizes are honoured exactly
    as_b64 = client.images.generate(model="flux-kontext-dev", prompt="a lake", response_format="b64_json",
                                    output_format="jpeg", n=2)
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in as_b64.data]
    assert [i.format for i in images] == ["JPEG", "JPEG"] and images[0].size == (256, 256)
    assert images[0].tobytes() != images[1].tobytes()  # n images, n seeds


def test_images_edit_with_one_image_or_a_list(client: openai.OpenAI, image_host: str) -> None:
    data = httpx.get(f"{image_host}/tall.jpg").content
    one = client.images.edit(model="flux-kontext-dev", prompt="paint it", image=("tall.jpg", data, "image/jpeg"))
    many = client.images.edit(model="flux-kontext-dev", prompt="paint it", size="16:9",
                              image=[("tall.jpg", data, "image/jpeg"), ("b.jpg", data, "image/jpeg")])
    assert Image.open(io.BytesIO(httpx.get(one.data[0].url).content)).size == (176, 352)
    assert Image.open(io.BytesIO(httpx.get(many.data[0].url).content)).size == (320, 192)  # 16:9 at 1/16


@pytest.mark.parametrize("body,param", [({"prompt": "x", "n": 11}, "n"), ({"prompt": "x", "size": "big"}, "size"),
                                        ({"prompt": ""}, "prompt"), ({"prompt": "x", "response_format": "gif"},
                                                                     "response_format")])
def test_images_validation(server: RunningServer, body: dict, param: str) -> None:
    response = httpx.post(f"{server.url}/v1/images/generations", headers=server.headers, json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert json.loads(response.text)["error"]["type"] == "invalid_request_error"
