"""The server's OpenAPI schema tells the truth: schemathesis runs in-process over the ASGI app as its command line
would (`schemathesis run --checks all`: the coverage and fuzzing phases, schema-valid and schema-breaking requests)
with every check on: no 5xx; every status, content type, header and body as declared; invalid data refused and
valid data accepted; auth enforced; unsupported methods answered 405. Tiny model; 25 examples per operation."""

import time

import pytest

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.engine import Status, events, from_schema  # noqa: E402

from softprompt.serving import create_app  # noqa: E402

KEY = "schema-key"
AUTH = {"Authorization": f"Bearer {KEY}"}

# Schema-valid requests the server refuses with a 400 for a reason no JSON Schema can state, as it depends on the
# model or the adapter named: the prompt's tokens plus max_tokens exceed the model's context (OpenAI and vLLM answer
# these with a 400 too), a row lacks the adapter's template columns, classification with a model that has no task.
# Every other check failure fails the test.
BEYOND_SCHEMA = ("more than the model's context", "no column", "needs an adapter with a task")


OPERATIONS = {
    ("/v1/models", "get"),
    ("/v1/completions", "post"),
    ("/v1/chat/completions", "post"),
    ("/v1/classify", "post"),
    ("/v1/load_lora_adapter", "post"),
    ("/v1/unload_lora_adapter", "post"),
    ("/v1/load_adapter", "post"),
    ("/v1/unload_adapter", "post"),
    ("/health", "get"),
    ("/metrics", "get"),
}


@pytest.mark.parametrize("api_key", [KEY, None])
def test_the_schema_declares_every_answer(predictor, api_key):
    from fastapi.testclient import TestClient

    with TestClient(create_app(predictor, api_key=api_key)) as client:
        schema = client.get("/openapi.json", headers=AUTH).json()
    assert {(path, method) for path, methods in schema["paths"].items() for method in methods} == OPERATIONS
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, methods in schema["paths"].items():
        for operation in methods.values():
            answers = operation["responses"]
            assert "422" not in answers  # invalid requests are answered 400
            assert ("401" in answers) == (api_key is not None and path != "/health"), path
            assert ("400" in answers) == ("requestBody" in operation), path
            assert all(answers[status]["content"] == error_body for status in answers if status.startswith("4"))
            assert "schema" in next(iter(answers["200"]["content"].values())), path
    paths = schema["paths"]
    assert paths["/v1/load_adapter"]["post"]["deprecated"] and paths["/v1/unload_adapter"]["post"]["deprecated"]
    assert set(paths["/v1/completions"]["post"]["responses"]) == {"200", "400", "404"} | ({"401"} if api_key else set())
    assert set(paths["/v1/unload_lora_adapter"]["post"]["responses"]) >= {"200", "400", "403", "404"}
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert list(paths["/v1/completions"]["post"]["responses"]["200"]["content"]) == [
        "application/json",
        "text/event-stream",
    ]
    assert all(f"`{name}`" in schema["info"]["description"] for name in ("logprobs", "best_of", "user", "n"))


def beyond_schema(context, failure, case, response) -> bool:
    """filter_failure hook: False drops a 'schema-valid request rejected' answered for a reason above."""
    if failure.code != "ST202" or response.status_code != 400:
        return True
    message = response.json()["error"]["message"]
    return not any(reason in message for reason in BEYOND_SCHEMA)


def described(check) -> str:
    failure = check.failure_info.failure
    return f"{failure.operation}: {check.name}: {failure.title}: {failure.message}\n  {check.failure_info.code_sample}"


MALFORMED = [
    b"",
    b"{",
    b"null",
    b"[]",
    b'"text"',
    b'{"model": null}',
    b'{"model": "complaints", "prompt": {"nested": [1, 2]}, "n": "two"}',
    b'{"model": "complaints", "prompt": "x", "max_tokens": 1e400, "temperature": NaN}',
    b'{"model": "complaints", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}',
    b'{"model": "complaints", "input": [[["deep"]]]}',
    b'{"lora_name": ["x"], "lora_path": {"a": 1}}',
    b'{"model": "\\ud800", "prompt": "\\u0000"}',  # a lone surrogate, a NUL
    b"\xff\xfe not utf-8",
]


def test_malformed_requests_never_get_a_5xx(predictor):
    from fastapi.testclient import TestClient

    with TestClient(create_app(predictor, api_key=KEY)) as client:
        for path in ("/v1/completions", "/v1/chat/completions", "/v1/classify", "/v1/load_lora_adapter"):
            for body in MALFORMED:
                for content_type in ("application/json", "text/plain"):
                    headers = {**AUTH, "content-type": content_type}
                    response = client.post(path, content=body, headers=headers)
                    assert 400 <= response.status_code < 500, (path, body, response.text)
                    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("api_key", [KEY, None])
def test_schemathesis_finds_nothing(predictor, api_key, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # a generated lora_path stays local
    app = create_app(predictor, api_key=api_key, max_wait_ms=2)
    models = [app.state.service.base_name, *predictor.adapter_names]
    headers = AUTH if api_key else {}
    config = schemathesis.Config.from_dict(
        {
            "headers": headers,
            "workers": 1,
            # the same examples every run (a test that passes keeps passing); `false` explores anew each run
            "generation": {"max-examples": 25, "database": "none", "deterministic": True},
            "checks": {"enabled": True},
            # half the time `model` names a loaded model; otherwise nearly every request would be a 404
            "dictionaries": {"models": {"values": models}},
            "parameters": {"body.model": {"dictionary": "models", "probability": 0.5}},
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config, headers=headers)
    schema.hook("filter_failure")(beyond_schema)
    started, answered, failures, errors = time.perf_counter(), {}, [], []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            statuses = answered.setdefault(event.label, set())
            statuses.update(i.response.status_code for i in event.recorder.interactions.values() if i.response)
            for checks in event.recorder.checks.values():
                failures += [described(c) for c in checks if c.status == Status.FAILURE]
        elif isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {event.value!r}\n  {event.info.code_sample}")
        elif isinstance(event, events.FatalError):
            errors.append(repr(event.exception))
    seconds = time.perf_counter() - started
    assert not errors, "\n".join(errors)
    assert not failures, "\n".join(failures)
    print(f"schemathesis: {seconds:.1f} s; statuses: {answered}")
    assert len(answered) == 10, answered
    for label in ("POST /v1/completions", "GET /v1/models", "GET /health"):
        assert 200 in answered[label], (label, answered[label])  # the run reached the model, not only 404s
    assert {400, 404} | ({401} if api_key else set()) <= answered["POST /v1/completions"]
    assert (403 in answered["POST /v1/load_lora_adapter"]) == (api_key is None)
    assert seconds < 240
