"""POST /v1/classify: {"model": ADAPTER, "input": [texts or rows]} -> each input's label and class probabilities,
through the adapter's template, calibrated by its stored prior when it has one."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..inference.engine import ScoreJob
from . import responses
from .schemas import APIError, ClassifyRequest, errors
from .service import Service

router = APIRouter()


@router.post("/v1/classify", response_model=responses.ClassifyResponse, responses=errors(400, 404))
async def classify(body: ClassifyRequest, request: Request):
    service: Service = request.app.state.service
    predictor = service.predictor
    adapter = service.adapter_for(body.model)
    if adapter is None:
        raise APIError(400, "Classification needs an adapter with a task: name one in 'model'.", "model")
    inputs = [body.input] if isinstance(body.input, (str, dict)) else body.input
    if not inputs:
        raise APIError(400, "'input' is empty: send one or more texts.", "input")
    try:
        task = predictor.row_tokenizer(adapter)
        examples = predictor.examples(inputs, [adapter] * len(inputs))
    except ValueError as error:
        raise APIError(400, str(error), "input") from error
    scores = await service.run(ScoreJob(examples, [adapter] * len(examples)))
    data = []
    for index, row in enumerate(scores):
        probabilities = predictor.class_probabilities(adapter, row)
        data.append(
            {
                "index": index,
                "label": task.class_names[int(probabilities.argmax())],
                "probabilities": {c: float(p) for c, p in zip(task.class_names, probabilities)},
            }
        )
    tokens = sum(len(e.prompt_ids) for e in examples)
    return {
        "object": "list",
        "model": body.model,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
