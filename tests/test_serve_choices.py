"""Several prompts and several choices in one request (`prompt` as a list, `n`), streamed or not, through the
openai client; vLLM's routes for loading adapters; bad requests answered with a 4xx naming the field while other
clients' requests are served. The openai client talks to the app in-process (a TestClient is an httpx client)."""

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from fastapi.testclient import TestClient

from softprompt.serving import create_app

KEY = "choices-key"
PROMPTS = ["Tweet text : my order never arrived Label :", "thanks for the quick help", "@Shop3 wifi down all day"]


@pytest.fixture
def client(predictor):
    with TestClient(create_app(predictor, api_key=KEY, max_wait_ms=20)) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=http, max_retries=0)


def greedy(offline, prompt, tokens=5, model="complaints"):
    return offline.generate(prompt, model, max_new_tokens=tokens)[0]


def test_a_list_of_prompts_gives_one_choice_per_prompt_in_order(client, offline):
    completion = client.completions.create(model="complaints", prompt=PROMPTS, max_tokens=5, temperature=0)
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert [choice.text for choice in completion.choices] == [greedy(offline, p) for p in PROMPTS]
    singles = [client.completions.create(model="complaints", prompt=p, max_tokens=5, temperature=0) for p in PROMPTS]
    assert completion.usage.prompt_tokens == sum(len(offline.tokenizer(p)["input_ids"]) for p in PROMPTS)
    assert completion.usage.completion_tokens == sum(single.usage.completion_tokens for single in singles)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_n_choices_per_prompt_in_openai_order(client, offline):
    """Choice prompt_index * n + k; without sampling the n choices are the same greedy text, as in vLLM."""
    completion = client.completions.create(model="yesno", prompt=PROMPTS[:2], n=3, max_tokens=4, temperature=0)
    assert [choice.index for choice in completion.choices] == list(range(6))
    texts = [greedy(offline, p, 4, "yesno") for p in PROMPTS[:2]]
    assert [choice.text for choice in completion.choices] == [texts[0]] * 3 + [texts[1]] * 3
    one = client.completions.create(model="yesno", prompt=PROMPTS[:2], max_tokens=4, temperature=0)
    assert completion.usage.completion_tokens == 3 * one.usage.completion_tokens  # every choice counts
    assert completion.usage.prompt_tokens == one.usage.prompt_tokens  # every prompt, once


def test_sampled_choices_differ_and_follow_the_seed(client):
    """Choice k of a seeded request is what n=1 gives with seed + k: repeatable, and not n copies of one sample."""
    settings = {"model": "complaints", "prompt": "hello", "max_tokens": 8, "temperature": 1.0}
    several = client.completions.create(n=3, seed=7, **settings)
    assert [choice.index for choice in several.choices] == [0, 1, 2]
    singles = [client.completions.create(seed=7 + k, **settings).choices[0].text for k in range(3)]
    assert [choice.text for choice in several.choices] == singles
    assert len(set(singles)) > 1
    unseeded = client.completions.create(n=4, **settings)
    assert [choice.index for choice in unseeded.choices] == [0, 1, 2, 3]


def test_chat_gives_n_choices(client, offline):
    messages = [{"role": "user", "content": "my order never arrived"}]
    chat = client.chat.completions.create(model="complaints", messages=messages, n=2, max_tokens=5, temperature=0)
    ids = offline.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    expected = offline.generate_ids([list(ids["input_ids"])], ["complaints"], max_new_tokens=5)[0]
    assert [(c.index, c.message.role, c.message.content) for c in chat.choices] == [
        (0, "assistant", expected),
        (1, "assistant", expected),
    ]
    newer = client.chat.completions.create(
        model="complaints", messages=messages, max_completion_tokens=5, temperature=0
    )
    assert newer.choices[0].message.content == expected  # OpenAI's newer name for max_tokens


def streamed(chunks, chat=False):
    """Text and finish reason per choice index, and the usage of the last chunk."""
    texts, finished, last = {}, {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            piece = (choice.delta.content or "") if chat else choice.text
            texts[choice.index] = texts.get(choice.index, "") + piece
            if choice.finish_reason is not None:
                assert choice.index not in finished, "one finish per choice"
                finished[choice.index] = choice.finish_reason
        last = chunk
    return texts, finished, last.usage


def test_streaming_several_prompts_and_choices(client):
    settings = {"model": "ptuning", "prompt": PROMPTS[:2], "n": 2, "max_tokens": 6, "temperature": 0}
    whole = client.completions.create(**settings)
    texts, finished, usage = streamed(client.completions.create(stream=True, **settings))
    assert texts == {c.index: c.text for c in whole.choices}
    assert finished == {c.index: c.finish_reason for c in whole.choices}
    assert usage == whole.usage
    messages = [{"role": "user", "content": "hi"}]
    chat = client.chat.completions.create(model="complaints", messages=messages, n=2, max_tokens=4, temperature=0)
    stream = client.chat.completions.create(
        model="complaints", messages=messages, n=2, max_tokens=4, temperature=0, stream=True
    )
    texts, finished, usage = streamed(stream, chat=True)
    assert texts == {c.index: c.message.content for c in chat.choices} and set(finished) == {0, 1}
    assert usage == chat.usage


def test_vllm_adapter_routes_through_the_openai_client(client, trained_adapters):
    body = {"lora_name": "again", "lora_path": trained_adapters["yesno"]}
    assert (
        client.post("/load_lora_adapter", body=body, cast_to=str) == "Success: LoRA adapter 'again' added successfully."
    )
    assert "again" in [m.id for m in client.models.list().data]
    assert client.completions.create(model="again", prompt="hi", max_tokens=2).choices[0].index == 0
    with pytest.raises(openai.BadRequestError, match="already loaded"):
        client.post("/load_lora_adapter", body=body, cast_to=str)
    removed = client.post("/unload_lora_adapter", body={"lora_name": "again"}, cast_to=str)
    assert removed == "Success: LoRA adapter 'again' removed successfully."
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="again", prompt="hi", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.post("/unload_lora_adapter", body={"lora_name": "again"}, cast_to=str)


BAD = [  # (request, the error, the field it names)
    ({"prompt": "x", "n": 0}, openai.BadRequestError, "n"),
    ({"prompt": "x", "n": 129}, openai.BadRequestError, "n"),
    ({"model": "nope", "prompt": "x"}, openai.NotFoundError, "model"),
    ({"prompt": ["fine", 3]}, openai.BadRequestError, "prompt"),
    ({"prompt": []}, openai.BadRequestError, "prompt"),
    ({"prompt": "x", "logprobs": 2}, openai.BadRequestError, "logprobs"),
    ({"prompt": "x", "best_of": 3}, openai.BadRequestError, "best_of"),
    ({"prompt": "x", "temperature": 5}, openai.BadRequestError, "temperature"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, openai.BadRequestError, "stop"),
    ({"prompt": "x", "max_tokens": 10**6}, openai.BadRequestError, "max_tokens"),
]


def test_bad_requests_name_the_field_while_the_others_are_served(client, offline):
    def bad(case):
        request, error, field = case
        with pytest.raises(error) as raised:
            client.completions.create(**{"model": "complaints", **request})
        return raised.value.param == field, raised.value.body

    def good(prompt):
        return client.completions.create(model="complaints", prompt=prompt, max_tokens=5, temperature=0).choices

    with ThreadPoolExecutor(max_workers=6) as pool:
        goods = [pool.submit(good, PROMPTS[i % 3]) for i in range(12)]
        bads = [pool.submit(bad, case) for case in BAD]
        for case, future in zip(BAD, bads):
            named, body = future.result()
            assert named, (case, body)
        for i, future in enumerate(goods):
            assert [c.text for c in future.result()] == [greedy(offline, PROMPTS[i % 3])]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="complaints", messages=[], max_tokens=2)
    assert raised.value.param == "messages"
