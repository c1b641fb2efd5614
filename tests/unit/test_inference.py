"""tasks/inference.py: the smoke answer check (pure parts); tasks/vllm/api.py: the bearer header and
the model list."""

import httpx
import pytest

from tasks.inference import ARITHMETIC, EXPECTED, QUESTION, completion_request, contains_expected, visible_answer
from tasks.vllm.api import VERSION_PATH, auth_headers, lists_model, version_from_body


def test_thinking_block_is_not_the_answer():
    assert visible_answer("<think>\n12*17 is 12*10 + 12*7 = 204? let me see\n</think>\n\n204") == "204"
    assert visible_answer("<think>unfinished 204 thoughts") == ""
    assert visible_answer(None) == ""


def test_expected_number_must_stand_alone():
    assert contains_expected("12 * 17 = **204**")
    assert not contains_expected("2040")
    assert not contains_expected("1204")
    assert not contains_expected("")


def test_the_smoke_question_is_one_definition():
    body = completion_request("qwen3")
    assert body == {"model": "qwen3", "prompt": "12*17=", "max_tokens": 16, "temperature": 0}
    assert ARITHMETIC in QUESTION and contains_expected(str(12 * 17)) and EXPECTED == "204"
    assert completion_request("qwen3", stream=True) == {**body, "stream": True}  # the health check's form


def test_the_bearer_header_is_sent_only_with_a_key():
    assert auth_headers("sk-1") == {"Authorization": "Bearer sk-1"}
    assert auth_headers(None) == {} and auth_headers("") == {}


@pytest.mark.parametrize(
    "status,body,listed",
    [
        (200, {"data": [{"id": "other"}, {"id": "qwen3"}]}, True),
        (200, {"data": [{"id": "other"}]}, False),
        (401, {"error": "Unauthorized"}, False),
        (200, "not json", False),
    ],
)
def test_the_model_list_names_the_served_model(status, body, listed):
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    with httpx.Client(base_url="http://vllm", transport=httpx.MockTransport(answer)) as http:
        assert lists_model(http, "qwen3") is listed


def test_no_answer_is_not_listed():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with httpx.Client(base_url="http://vllm", transport=httpx.MockTransport(refuse)) as http:
        assert lists_model(http, "qwen3") is False


@pytest.mark.parametrize(
    "body,version",
    [
        ({"version": "0.10.1.1+381074ae.nv25.09"}, "0.10.1.1+381074ae.nv25.09"),  # api_server.py:573-576, 0.10.1.1
        ({"version": "0.31.0"}, "0.31.0"),  # vllm/entrypoints/serve/instrumentator/basic.py:53-56, 0.31.0
        ({"version": " "}, None),
        ({"version": 31}, None),
        ({"detail": "Not Found"}, None),  # an older or other server
        ([], None),
        (None, None),
    ],
)
def test_the_version_route_s_body(body, version):
    assert VERSION_PATH == "/version"
    assert version_from_body(body) == version
