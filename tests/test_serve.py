"""`softprompt serve`: every endpoint and every error in-process, then a real server with the openai client
and a load test."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient

from softprompt import Predictor, PrefixTuningConfig, get_peft_model
from softprompt.inference.engine import Engine, GenerateJob, ScoreJob
from softprompt.serving import create_app
from tiny_models import tiny_model

KEY = "test-key"
TEXTS = ["my order never arrived", "thanks for the quick help", "@Shop3 wifi down all day"]


@pytest.fixture
def client(predictor):
    with TestClient(create_app(predictor, api_key=KEY, max_wait_ms=20)) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        yield client


@pytest.fixture
def open_client(predictor):
    with TestClient(create_app(predictor)) as client:
        yield client


def base_name(predictor):
    return predictor.model.base_model.name_or_path


# ---- endpoints ---------------------------------------------------------------------------------
def test_completions_equal_the_offline_greedy_answer(client, offline):
    prompt = "Tweet text : my order never arrived Label :"
    for model in ["complaints", "yesno", "ptuning"]:
        body = client.post(
            "/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0}
        ).json()
        assert body["object"] == "text_completion" and body["model"] == model
        [choice] = body["choices"]
        assert choice["text"] == offline.generate(prompt, model, max_new_tokens=6)[0]
        prompt_tokens = len(offline.tokenizer(prompt)["input_ids"])
        assert body["usage"]["prompt_tokens"] == prompt_tokens
        assert body["usage"]["total_tokens"] == prompt_tokens + body["usage"]["completion_tokens"]
        assert choice["finish_reason"] in ("stop", "length")
        assert (choice["finish_reason"] == "length") == (body["usage"]["completion_tokens"] == 6)


def test_the_base_model_is_served_under_its_own_name(client, offline, predictor):
    prompt = "hello there"
    body = client.post(
        "/v1/completions", json={"model": base_name(predictor), "prompt": prompt, "max_tokens": 5, "temperature": 0}
    ).json()
    assert body["choices"][0]["text"] == offline.generate(prompt, "__base__", max_new_tokens=5)[0]


def test_chat_completions_use_the_chat_template(client, offline):
    messages = [{"role": "user", "content": "my order never arrived"}]
    body = client.post(
        "/v1/chat/completions", json={"model": "complaints", "messages": messages, "max_tokens": 5, "temperature": 0}
    ).json()
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    prompt = offline.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "user: my order never arrived\nassistant:"
    ids = offline.tokenizer(prompt)["input_ids"]
    assert message["content"] == offline.generate_ids([ids], ["complaints"], max_new_tokens=5)[0]


def test_classify_gives_the_numbers_of_softprompt_predict(client, offline):
    rows = TEXTS + [{"Tweet text": "billing charged me twice"}]
    body = client.post("/v1/classify", json={"model": "yesno", "input": rows}).json()
    expected = offline.classify(rows, "yesno")
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    for got, want in zip(body["data"], expected):
        assert got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
    single = client.post("/v1/classify", json={"model": "complaints", "input": TEXTS[0]}).json()
    assert len(single["data"]) == 1


def test_models_lists_the_base_model_and_every_adapter(client, predictor):
    body = client.get("/v1/models").json()
    assert [m["id"] for m in body["data"]] == [base_name(predictor), "complaints", "yesno", "ptuning"]
    assert all(m["object"] == "model" for m in body["data"])
    assert body["data"][1]["parent"] == base_name(predictor)


def test_streaming_sends_the_same_text_in_pieces(client, offline):
    prompt = "Tweet text : thanks for the quick help Label :"
    settings = {"model": "ptuning", "prompt": prompt, "max_tokens": 8, "temperature": 0}
    whole = client.post("/v1/completions", json=settings).json()
    with client.stream("POST", "/v1/completions", json={**settings, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == whole["usage"]
    assert len(chunks) >= 2


def test_stop_strings_end_the_text_before_them(client, offline):
    prompt = "Tweet text : my order never arrived Label :"
    full = offline.generate(prompt, "complaints", max_new_tokens=12)[0]
    stop = full.strip()[2:4] if len(full.strip()) >= 4 else None
    if not stop:
        pytest.skip("the tiny model's answer is too short to cut")
    body = client.post(
        "/v1/completions",
        json={"model": "complaints", "prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": [stop]},
    ).json()
    choice = body["choices"][0]
    assert choice["text"] == full[: full.find(stop)] and choice["finish_reason"] == "stop"


def test_sampling_with_a_seed_repeats(client):
    settings = {"model": "complaints", "prompt": "hello", "max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    first = client.post("/v1/completions", json=settings).json()["choices"][0]["text"]
    assert client.post("/v1/completions", json=settings).json()["choices"][0]["text"] == first


def test_metrics_report_requests_batches_and_adapters(client):
    client.post("/v1/classify", json={"model": "complaints", "input": TEXTS})
    client.post("/v1/classify", json={"model": "nope", "input": TEXTS})
    text = client.get("/metrics").text
    assert 'softprompt_requests_total{endpoint="/v1/classify",status="200"}' in text
    assert 'softprompt_errors_total{endpoint="/v1/classify"}' in text
    assert "softprompt_batch_rows_bucket" in text and "softprompt_queue_seconds_bucket" in text
    assert "softprompt_request_seconds_bucket" in text
    assert "softprompt_adapters_loaded 3.0" in text
    assert client.get("/health").json() == {"status": "ok", "adapters": 3}


# ---- bad input: a clear 4xx, and nothing else disturbed ----------------------------------------
def test_bad_requests_get_a_4xx_naming_the_field(client, predictor):
    unknown = client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert (
        "'nope' does not exist" in error["message"] and "complaints" in error["message"] and error["param"] == "model"
    )
    malformed = client.post(
        "/v1/completions", content=b'{"model": "complaints", "prompt": ', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]["message"]
    wrong_type = client.post("/v1/completions", json={"model": "complaints", "prompt": "x", "max_tokens": "many"})
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "max_tokens"
    missing = client.post("/v1/classify", json={"model": "complaints"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "input"
    too_hot = client.post("/v1/completions", json={"model": "complaints", "prompt": "x", "temperature": 5})
    assert too_hot.status_code == 400 and too_hot.json()["error"]["param"] == "temperature"
    context = predictor.model.base_model.config.max_position_embeddings
    too_long = client.post("/v1/completions", json={"model": "complaints", "prompt": "x", "max_tokens": context})
    assert too_long.status_code == 400 and f"context of {context} tokens" in too_long.json()["error"]["message"]
    unsupported = client.post("/v1/completions", json={"model": "complaints", "prompt": "x", "logprobs": 3})
    assert unsupported.status_code == 400 and unsupported.json()["error"]["param"] == "logprobs"
    no_choices = client.post("/v1/completions", json={"model": "complaints", "prompt": "x", "n": 0})
    assert no_choices.status_code == 400 and no_choices.json()["error"]["param"] == "n"
    token_ids = client.post("/v1/completions", json={"model": "complaints", "prompt": ["x", [5, 6]]})
    assert token_ids.status_code == 400 and token_ids.json()["error"]["param"] == "prompt"
    assert "prompt[1]" in token_ids.json()["error"]["message"]
    base_classify = client.post("/v1/classify", json={"model": base_name(predictor), "input": ["x"]})
    assert base_classify.status_code == 400
    bad_row = client.post("/v1/classify", json={"model": "complaints", "input": [{"Other": "x"}]})
    assert bad_row.status_code == 400 and "no column 'Tweet text'" in bad_row.json()["error"]["message"]
    # and the server still answers
    assert client.post("/v1/classify", json={"model": "complaints", "input": TEXTS}).status_code == 200


def test_api_key_is_required_everywhere_but_health(predictor):
    with TestClient(create_app(predictor, api_key=KEY)) as client:
        assert client.post("/v1/classify", json={"model": "complaints", "input": TEXTS}).status_code == 401
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
        assert client.get("/health").status_code == 200
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_loading_adapters_at_run_time_needs_an_api_key(open_client, trained_adapters):
    for route in ("/v1/load_lora_adapter", "/v1/load_adapter"):
        response = open_client.post(route, json={"lora_name": "x", "lora_path": trained_adapters["complaints"]})
        assert response.status_code == 403 and "--api-key" in response.json()["error"]["message"]


def test_load_and_unload_adapters_at_run_time(client, trained_adapters, offline, tmp_path):
    """vLLM's routes and answers: 200 with a sentence; 400 for a name taken or files that do not load; 404 for a
    path that does not exist or a name not loaded."""
    again = {"lora_name": "again", "lora_path": trained_adapters["yesno"]}
    loaded = client.post("/v1/load_lora_adapter", json=again)
    assert loaded.status_code == 200 and loaded.text == "Success: LoRA adapter 'again' added successfully."
    body = client.post("/v1/classify", json={"model": "again", "input": TEXTS}).json()
    assert [d["label"] for d in body["data"]] == [p["label"] for p in offline.classify(TEXTS, "yesno")]
    # refused with the reason, while the others keep serving
    damaged = tmp_path / "damaged"
    shutil.copytree(trained_adapters["complaints"], damaged)
    (damaged / "adapter_model.safetensors").write_bytes(b"not safetensors")
    get_peft_model(tiny_model("gpt2"), PrefixTuningConfig(num_virtual_tokens=2)).save_pretrained(tmp_path / "gpt2")
    for path, status, reason in [
        (tmp_path / "missing", 404, "does not exist"),
        (damaged, 400, "not a readable safetensors file"),
        (tmp_path / "gpt2", 400, "does not fit this base model"),
    ]:
        refused = client.post("/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(path)})
        assert refused.status_code == status and reason in refused.json()["error"]["message"], refused.json()
        assert refused.json()["error"]["param"] == "lora_path"
    duplicate = client.post("/v1/load_lora_adapter", json=again)
    assert duplicate.status_code == 400 and "already loaded" in duplicate.json()["error"]["message"]
    missing = client.post("/v1/load_lora_adapter", json={"lora_name": "x"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "lora_path"
    assert client.post("/v1/classify", json={"model": "complaints", "input": TEXTS}).status_code == 200
    unloaded = client.post("/v1/unload_lora_adapter", json={"lora_name": "again"})
    assert unloaded.status_code == 200 and unloaded.text == "Success: LoRA adapter 'again' removed successfully."
    assert client.post("/v1/classify", json={"model": "again", "input": TEXTS}).status_code == 404
    assert client.post("/v1/unload_lora_adapter", json={"lora_name": "again"}).status_code == 404
    assert [m["id"] for m in client.get("/v1/models").json()["data"]][1:] == ["complaints", "yesno", "ptuning"]


def test_the_older_adapter_routes_still_work(client, trained_adapters):
    """/v1/load_adapter and /v1/unload_adapter: deprecated aliases that answer JSON and take adapter_* names too."""
    loaded = client.post("/v1/load_adapter", json={"adapter_name": "old", "adapter_path": trained_adapters["yesno"]})
    assert loaded.status_code == 200 and loaded.json() == {"status": "ok", "loaded": "old"}
    missing = client.post("/v1/load_adapter", json={"lora_name": "x"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "lora_path"
    assert client.post("/v1/unload_adapter", json={"lora_name": "old"}).json() == {"status": "ok", "unloaded": "old"}
    assert client.post("/v1/unload_adapter", json={"lora_name": "old"}).status_code == 404


# ---- the engine: batching across adapters, faults isolated, cancellation ------------------------
def test_requests_that_arrive_together_run_in_one_batch_whatever_their_adapters(predictor, offline):
    batches = []
    engine = Engine(
        predictor,
        max_batch_size=32,
        max_wait_ms=200,
        observe=lambda batch_rows=None, **_: batch_rows and batches.append(batch_rows),
    )
    engine.start()
    try:
        jobs = []
        for name in ["complaints", "yesno", "ptuning"]:
            examples = predictor.examples(TEXTS, [name] * len(TEXTS))
            jobs.append((name, engine.submit(ScoreJob(examples, [name] * 3))))
        for name, future in jobs:
            got = torch.stack(future.result(timeout=30)).softmax(-1)
            torch.testing.assert_close(got, offline.probabilities(TEXTS, name), atol=1e-5, rtol=0)
    finally:
        engine.stop()
    assert batches == [9]  # three requests, three adapters, one batch


def test_an_app_serves_again_when_its_lifespan_runs_again(predictor):
    """The engine's thread stops with the app's lifespan and starts anew with the next one."""
    app = create_app(predictor)
    for _ in range(2):
        with TestClient(app) as client:
            assert client.post("/v1/classify", json={"model": "complaints", "input": TEXTS[:1]}).status_code == 200


def test_one_failing_request_does_not_fail_the_others_in_its_batch(predictor):
    engine = Engine(predictor, max_wait_ms=200).start()
    try:
        example = predictor.examples(TEXTS[:1], ["complaints"])[0]
        prompt = example.prompt_ids
        good = engine.submit(ScoreJob([example], ["complaints"]))
        bad = engine.submit(ScoreJob([example], ["unloaded-meanwhile"]))
        also_good = engine.submit(GenerateJob(prompt, "yesno", 3, {"do_sample": False}))
        assert len(good.result(timeout=30)) == 1 and also_good.result(timeout=30).completion_tokens >= 1
        with pytest.raises(ValueError, match="Unknown adapter 'unloaded-meanwhile'"):
            bad.result(timeout=30)
    finally:
        engine.stop()


def test_a_cancelled_generation_stops_early(predictor):
    engine = Engine(predictor).start()
    try:
        seen = []
        job = GenerateJob([5, 6, 7], "complaints", 200, {"do_sample": False}, on_token=seen.append)
        job.on_token = lambda token: (seen.append(token), len(seen) >= 3 and job.cancelled.set())
        result = engine.submit(job).result(timeout=30)
        assert result.completion_tokens < 10 and len(seen) < 10
    finally:
        engine.stop()


# ---- a real server, the openai client, a bounded load test, SIGTERM ------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_adapters):
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "softprompt.cli",
        "serve",
        "--port",
        str(port),
        "--api-key",
        KEY,
        "--max-wait-ms",
        "10",
    ]
    for name, path in trained_adapters.items():
        args += ["--adapter", f"{name}={path}"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url, process)
    yield url, process
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)


def wait_until_up(url, process, seconds=60):
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the server did not come up")


def test_the_openai_client_talks_to_a_real_server(server, offline):
    from openai import OpenAI

    url, _ = server
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data][1:] == ["complaints", "yesno", "ptuning"]
    prompt = "Tweet text : my order never arrived Label :"
    completion = client.completions.create(model="yesno", prompt=prompt, max_tokens=5, temperature=0)
    assert completion.choices[0].text == offline.generate(prompt, "yesno", max_new_tokens=5)[0]
    assert completion.usage.completion_tokens >= 1
    several = client.completions.create(model="yesno", prompt=[prompt, "hi"], n=2, max_tokens=5, temperature=0)
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    assert several.choices[0].text == several.choices[1].text == completion.choices[0].text
    chat = client.chat.completions.create(
        model="complaints", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert chat.choices[0].message.role == "assistant"
    pieces = client.completions.create(model="yesno", prompt=prompt, max_tokens=5, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in pieces) == completion.choices[0].text
    stream = client.chat.completions.create(
        model="complaints", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == chat.choices[0].message.content
    import openai

    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


def test_load_test_many_clients_many_adapters_nothing_lost_or_crossed(server, offline):
    """96 requests from 8 concurrent clients over 3 adapters, classification and generation mixed: zero errors,
    and every answer is the one its adapter gives offline. Loopback only, bounded in count and time."""
    import httpx

    url, _ = server
    names = ["complaints", "yesno", "ptuning"]
    texts = [f"{t} #{n}" for n in range(4) for t in TEXTS]
    requests = [(i % 2 == 0, names[i % 3], texts[i % len(texts)]) for i in range(96)]
    expected_labels = {(name, text): offline.classify([text], name)[0] for name in names for text in texts}
    expected_text = {
        (name, text): offline.generate(text, name, max_new_tokens=4)[0] for name in names for text in texts
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    started = time.time()

    def send(request):
        classify, name, text = request
        with httpx.Client(timeout=60) as http:
            if classify:
                return http.post(f"{url}/v1/classify", json={"model": name, "input": [text]}, headers=headers)
            return http.post(
                f"{url}/v1/completions",
                json={"model": name, "prompt": text, "max_tokens": 4, "temperature": 0},
                headers=headers,
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(send, requests))
    assert time.time() - started < 120
    assert [r.status_code for r in responses] == [200] * len(requests)
    for (classify, name, text), response in zip(requests, responses):
        body = response.json()
        if classify:
            got, want = body["data"][0], expected_labels[(name, text)]
            assert got["label"] == want["label"] and got["probabilities"] == pytest.approx(
                want["probabilities"], abs=1e-4
            )
        else:
            assert body["choices"][0]["text"] == expected_text[(name, text)], (name, text)
    metrics = httpx.get(f"{url}/metrics", headers=headers).text
    sizes = [
        line for line in metrics.splitlines() if line.startswith("softprompt_batch_rows_bucket") and 'le="1.0"' in line
    ]
    batches = float(
        next(line for line in metrics.splitlines() if line.startswith("softprompt_batch_rows_count")).split()[-1]
    )
    single = float(sizes[0].split()[-1])
    assert single < batches  # some requests did share a batch


def test_a_client_that_disconnects_mid_stream_frees_its_place(server):
    import httpx

    url, _ = server
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "complaints", "prompt": "hello", "max_tokens": 240, "temperature": 1.5, "seed": 3}

    def generated_tokens(http):
        metrics = http.get(f"{url}/metrics", headers=headers).text
        return float(
            next(line for line in metrics.splitlines() if line.startswith("softprompt_generated_tokens_total")).split()[
                -1
            ]
        )

    with httpx.Client(timeout=30) as http:
        whole = http.post(f"{url}/v1/completions", json=body, headers=headers).json()
        assert whole["usage"]["completion_tokens"] == 240  # uncancelled, this prompt runs to the end
        before = generated_tokens(http)
        with http.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, headers=headers) as response:
            next(response.iter_lines())  # one event, then hang up
        again = http.post(f"{url}/v1/classify", json={"model": "complaints", "input": TEXTS}, headers=headers)
        assert again.status_code == 200
        deadline = time.time() + 10
        while generated_tokens(http) == before and time.time() < deadline:
            time.sleep(0.05)
        assert 0 < generated_tokens(http) - before < 240  # the abandoned generation stopped early


def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones(trained_adapters):
    import httpx

    port = free_port()
    args = [
        sys.executable,
        "-m",
        "softprompt.cli",
        "serve",
        "--port",
        str(port),
        "--adapter",
        f"c={trained_adapters['complaints']}",
    ]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url, process)
    result = {}

    def slow(n):  # sampling: a random text does not stop early at EOS as often
        body = {"model": "c", "prompt": f"hello {n}", "max_tokens": 200, "temperature": 1.5, "seed": n}
        try:
            result[n] = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        except httpx.ConnectError:  # not yet connected when SIGTERM came (a busy machine): refused, as it should be
            result[n] = None

    threads = [threading.Thread(target=slow, args=(n,)) for n in range(8)]  # seeded: they run one after another
    for thread in threads:
        thread.start()
    deadline = time.time() + 30
    while "softprompt_queue_seconds_count 0.0" in httpx.get(f"{url}/metrics").text and time.time() < deadline:
        time.sleep(0.05)  # until the first request is being computed
    time.sleep(0.2)  # and the others have had time to connect
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    in_flight = any(thread.is_alive() for thread in threads)
    with pytest.raises(httpx.ConnectError):  # no new connections once shutting down
        httpx.get(f"{url}/health", timeout=2)
    for thread in threads:
        thread.join(timeout=60)
    assert in_flight, "the requests ended before SIGTERM: make them longer"
    answered = [result[n] for n in range(8) if result[n] is not None]
    assert len(answered) >= 2, "too few requests were in flight to test anything"
    assert [r.status_code for r in answered] == [200] * len(answered)  # every accepted request finished
    assert all(r.json()["usage"]["completion_tokens"] >= 1 for r in answered)
    # uvicorn re-raises the signal after its graceful shutdown, as process managers expect
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in process.stdout.read()


def test_a_sequence_classification_adapter_is_served_too(tmp_path):
    from softprompt.training import TrainConfig, train
    from tiny_run import run_config

    config = run_config(tmp_path, "prefix_tuning", epochs=2)
    config["task"].update(template="{Tweet text}")
    config["task_type"] = "SEQ_CLS"
    train(TrainConfig.from_dict(config))
    adapter = str(tmp_path / "run" / "adapter")
    offline = Predictor.from_pretrained({"head": adapter}).classify(TEXTS, "head")
    with TestClient(create_app(Predictor.from_pretrained({"head": adapter}))) as client:
        body = client.post("/v1/classify", json={"model": "head", "input": TEXTS}).json()
        for got, want in zip(body["data"], offline):
            assert got["label"] == want["label"]
            assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
        refused = client.post("/v1/completions", json={"model": "head", "prompt": "x", "max_tokens": 2})
        assert refused.status_code == 400 and "does not generate" in refused.json()["error"]["message"]
