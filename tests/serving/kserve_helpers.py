"""KServe v2 test helpers: our PredictRequest as tritonclient inputs, and the answer of
our own API in the same shape, so both protocols are compared on one footing."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as triton

from serving.protos import inference_pb2


def bytes_input(name: str, values: list[bytes | str]) -> triton.InferInput:
    """A BYTES [n] input in raw_input_contents (tritonclient's default)."""
    array = np.empty(len(values), dtype=object)
    array[:] = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    tensor = triton.InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def kserve_inputs(message: inference_pb2.PredictRequest, task_as_input: bool = True
                  ) -> list[triton.InferInput]:
    """The tensors of a `request_for(...)` message (images as IMAGES, frames as FRAMES)."""
    tensors: dict[str, list[bytes | str]] = {}
    if task_as_input:
        tensors["TASK"] = [message.task]
    if message.images:
        tensors["IMAGES"] = [image.encoded for image in message.images]
    if message.video.frames:
        tensors["FRAMES"] = [frame.encoded for frame in message.video.frames]
    if message.video.subtitles:
        tensors["SUBTITLES"] = [message.video.subtitles]
    if message.text:
        tensors["TEXT"] = [message.text]
    if message.choices:
        tensors["CHOICES"] = list(message.choices)
    return [bytes_input(name, values) for name, values in tensors.items()]


def kserve_parameters(message: inference_pb2.PredictRequest, with_task: bool = False) -> dict:
    parameters = {"max_new_tokens": message.generation.max_new_tokens,
                  "num_beams": message.generation.num_beams}
    if with_task:
        parameters["task"] = message.task
    return parameters


def infer(client: triton.InferenceServerClient, message: inference_pb2.PredictRequest,
          model_version: str = "", **kwargs) -> tuple[str, list[float], str]:
    """(TEXT, SCORES, model_version) of a KServe ModelInfer for `message`."""
    result = client.infer(message.adapter.name, kserve_inputs(message),
                          model_version=model_version, request_id=message.request_id,
                          parameters=kserve_parameters(message), client_timeout=30, **kwargs)
    response = result.get_response()
    assert response.id == message.request_id
    text = result.as_numpy("TEXT")[0].decode("utf-8")
    return text, result.as_numpy("SCORES").tolist(), response.model_version
