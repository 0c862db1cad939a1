"""KServe v2 tensors <-> our requests: the input / output names, their codec, and the
ModelMetadata / ModelConfig that document them.

An adapter model (name = adapter name, version = adapter version) takes BYTES tensors:

    TASK       [1]     vqa, gqa, nlvr2, caption, tvqa, how2qa, tvc, yc2c (or parameter "task")
    IMAGE      [1]     one encoded JPEG / PNG / WebP image
    IMAGES     [n]     encoded images (two for nlvr2)
    TEXT       [1]     the question / statement (absent for captioning)
    CHOICES    [k]     multiple-choice answers (tvqa, how2qa)
    SUBTITLES  [1]     video subtitles
    FRAMES     [f]     encoded video frames in time order (video tasks)
    FEATURES   FP32 [n, tokens, feat_dim]  precomputed visual features instead of encoded
                       images: n images (two for nlvr2) or n video frames, in order

and answers TEXT BYTES [1] (the generated text, or the chosen candidate's text) and
SCORES FP32 [k] (candidate log-probabilities: ["true", "false"] for nlvr2, the CHOICES in
order for multiple choice; [0] for generation). Request parameters: `task`,
`max_new_tokens`, `num_beams`, and `stream` (bool; ModelStreamInfer only: one response
per decoded piece of text, then the full answer, flagged by `triton_final_response`).
The vision model takes PIXELS FP32 [n, 3, H, W] and answers FEATURES FP32
[n, grid*grid, feat_dim].

Tensors arrive either in `raw_input_contents` (BYTES elements as 4-byte little-endian
length + bytes, numbers little-endian) or in typed `contents`; both are accepted.
Outputs go back in `raw_output_contents`, as Triton does.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2

from modeling.tasks import TASKS, VisualInput
from serving.limits import InvalidInput
from serving.protos import inference_pb2
from serving.requests import INT32, VERSION, parse_integer

TensorMetadata = service_pb2.ModelMetadataResponse.TensorMetadata


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, KServe datatype, shape (-1: any size), what it holds."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    doc: str = ""


ADAPTER_INPUTS = (
    TensorSpec("TASK", "BYTES", (1,), "task name (or request parameter 'task')"),
    TensorSpec("IMAGE", "BYTES", (1,), "one encoded JPEG / PNG / WebP image"),
    TensorSpec("IMAGES", "BYTES", (-1,), "encoded images (two for nlvr2)"),
    TensorSpec("TEXT", "BYTES", (1,), "question or statement"),
    TensorSpec("CHOICES", "BYTES", (-1,), "multiple-choice answers"),
    TensorSpec("SUBTITLES", "BYTES", (1,), "video subtitles"),
    TensorSpec("FRAMES", "BYTES", (-1,), "encoded video frames in time order"),
    TensorSpec("FEATURES", "FP32", (-1, -1, -1),
               "precomputed features [n, tokens, feat_dim] of n images or video frames"),
)
ADAPTER_OUTPUTS = (
    TensorSpec("TEXT", "BYTES", (1,), "generated text or the chosen candidate's text"),
    TensorSpec("SCORES", "FP32", (-1,), "candidate log-probabilities (scoring tasks)"),
)
CONFIG_TYPES = {"BYTES": model_config_pb2.TYPE_STRING, "FP32": model_config_pb2.TYPE_FP32}


def vision_specs(image_size: int, tokens: int, feat_dim: int
                 ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of the vision model for a tower taking `image_size` pixels."""
    return ((TensorSpec("PIXELS", "FP32", (-1, 3, image_size, image_size),
                        "CLIP-normalised pixel values"),),
            (TensorSpec("FEATURES", "FP32", (-1, tokens, feat_dim), "grid features"),))


# --- decoding ----------------------------------------------------------------------------
def split_bytes(raw: bytes, what: str) -> list[bytes]:
    """A raw BYTES tensor (each element: uint32 little-endian length, then the bytes)."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"{what}: truncated BYTES element length at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"{what}: BYTES element of {length} bytes runs past the end")
        items.append(raw[offset:offset + length])
        offset += length
    return items


def _element_count(tensor, what: str) -> int:
    """The element count its shape declares, exact (Python ints: [2**32, 2**32] does not
    wrap around to 0 as an int64 product would)."""
    if any(d < 0 for d in tensor.shape):
        raise InvalidInput(f"{what} has a negative dimension in shape {list(tensor.shape)}")
    return math.prod(tensor.shape)


def read_inputs(request: service_pb2.ModelInferRequest, expected: tuple[TensorSpec, ...]
                ) -> dict[str, np.ndarray]:
    """name -> array (BYTES: an object array of bytes; FP32: float32), shaped as declared.

    Raises InvalidInput for an unknown name, a wrong datatype, a duplicate, or contents
    whose element count does not match the shape.
    """
    specs = {spec.name: spec for spec in expected}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for "
                           f"{len(request.inputs)} inputs; give one per input (or none)")
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        what = f"input {tensor.name!r}"
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidInput(f"unknown {what}; this model takes {', '.join(specs)}")
        if tensor.datatype != spec.datatype:
            raise InvalidInput(f"{what} is {tensor.datatype or 'untyped'}; expected "
                               f"{spec.datatype}")
        if tensor.name in arrays:
            raise InvalidInput(f"{what} is given twice")
        count = _element_count(tensor, what)
        if spec.datatype == "BYTES":
            items = split_bytes(raw[i], what) if raw else list(tensor.contents.bytes_contents)
            values = np.empty(len(items), dtype=object)
            values[:] = items
        elif raw:
            if len(raw[i]) % 4:
                raise InvalidInput(f"{what} holds {len(raw[i])} bytes, not a whole FP32 count")
            values = np.frombuffer(raw[i], dtype="<f4")
        else:
            values = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
        if values.size != count:
            raise InvalidInput(f"{what} holds {values.size} elements; shape "
                               f"{list(tensor.shape)} needs {count}")
        arrays[tensor.name] = values.reshape(tuple(tensor.shape))
    return arrays


def _one_string(arrays: dict[str, np.ndarray], name: str) -> str | None:
    """The single UTF-8 string in a [1] BYTES input, None when absent."""
    if name not in arrays:
        return None
    values = arrays[name].reshape(-1)
    if values.size != 1:
        raise InvalidInput(f"input {name!r} must hold one element, got {values.size}")
    try:
        return bytes(values[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"input {name!r} is not valid UTF-8") from None


def _task(arrays: dict[str, np.ndarray], parameters) -> str:
    from_input = _one_string(arrays, "TASK")
    from_parameter = parameters["task"].string_param if "task" in parameters else None
    if from_input is not None and from_parameter is not None and from_input != from_parameter:
        raise InvalidInput(f"input TASK {from_input!r} and parameter task {from_parameter!r} "
                           "disagree")
    task = from_input if from_input is not None else from_parameter
    if not task:
        raise InvalidInput("the task is missing: give input TASK or parameter 'task'")
    return task


def int_parameter(parameters, name: str, bounds: tuple[int, int]) -> int | None:
    """An integer request parameter (int64, uint64 or a string of digits) within `bounds`;
    None when absent. A bool or double is refused, naming the parameter."""
    if name not in parameters:
        return None
    value = parameters[name]
    which = value.WhichOneof("parameter_choice")
    return parse_integer(getattr(value, which) if which else None, f"parameter {name!r}",
                         bounds)


def predict_request(request: service_pb2.ModelInferRequest,
                    arrays: dict[str, np.ndarray]) -> inference_pb2.PredictRequest:
    """The KServe request of an adapter model as our own PredictRequest (then validated by
    the same checks as `Inference.Predict`)."""
    message = inference_pb2.PredictRequest(task=_task(arrays, request.parameters),
                                           request_id=request.id)
    message.adapter.name = request.model_name
    if request.model_version:
        message.adapter.version = parse_integer(request.model_version, "model_version",
                                                VERSION)
    if "IMAGE" in arrays and "IMAGES" in arrays:
        raise InvalidInput("give IMAGE or IMAGES, not both")
    if "FEATURES" in arrays:
        _add_features(message, arrays)
    for name in ("IMAGE", "IMAGES"):
        for item in arrays.get(name, np.empty(0, dtype=object)).reshape(-1):
            message.images.add(encoded=bytes(item))
    for item in arrays.get("FRAMES", np.empty(0, dtype=object)).reshape(-1):
        message.video.frames.add(encoded=bytes(item))
    message.video.subtitles = _one_string(arrays, "SUBTITLES") or ""
    message.text = _one_string(arrays, "TEXT") or ""
    for item in arrays.get("CHOICES", np.empty(0, dtype=object)).reshape(-1):
        try:
            message.choices.append(bytes(item).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput("input 'CHOICES' is not valid UTF-8") from None
    # Range-checked as the int32 fields they fill; the server's limits are checked later.
    message.generation.max_new_tokens = int_parameter(request.parameters, "max_new_tokens",
                                                      INT32) or 0
    message.generation.num_beams = int_parameter(request.parameters, "num_beams", INT32) or 0
    return message


def _add_features(message: inference_pb2.PredictRequest, arrays: dict[str, np.ndarray]
                  ) -> None:
    """FEATURES [n, tokens, feat_dim] -> n `Features` images (or frames, for video tasks)."""
    given = [name for name in ("IMAGE", "IMAGES", "FRAMES") if name in arrays]
    if given:
        raise InvalidInput(f"give FEATURES or encoded {given[0]}, not both")
    features = arrays["FEATURES"]
    if features.ndim != 3 or 0 in features.shape:
        raise InvalidInput("input 'FEATURES' must be FP32 [n, tokens, feat_dim] with no zero "
                           f"size, got {list(features.shape)}")
    spec = TASKS.get(message.task)  # an unknown task is refused later (NOT_FOUND)
    video = spec is not None and spec.visual_input is VisualInput.VIDEO_FRAMES
    target = message.video.frames if video else message.images
    for item in features:
        target.add(features=inference_pb2.Features(
            data=np.ascontiguousarray(item, dtype="<f4").tobytes(), tokens=item.shape[0],
            feat_dim=item.shape[1]))


def stream_flag(parameters) -> bool:
    """The request parameter `stream` (bool, or the strings true / false); False if absent."""
    if "stream" not in parameters:
        return False
    value = parameters["stream"]
    which = value.WhichOneof("parameter_choice")
    if which == "bool_param":
        return value.bool_param
    if which == "string_param" and value.string_param.lower() in ("true", "false"):
        return value.string_param.lower() == "true"
    raise InvalidInput("parameter 'stream' must be a bool")


# --- encoding ----------------------------------------------------------------------------
def join_bytes(items: list[bytes]) -> bytes:
    """Elements -> one raw BYTES tensor (uint32 little-endian length before each)."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def wanted_outputs(request: service_pb2.ModelInferRequest,
                   outputs: tuple[TensorSpec, ...]) -> list[str]:
    """The output names to send: those requested (in order), or all of them."""
    names = [spec.name for spec in outputs]
    requested = [output.name for output in request.outputs]
    unknown = [name for name in requested if name not in names]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; this model has {', '.join(names)}")
    return requested or names


def add_output(response: service_pb2.ModelInferResponse, name: str,
               value: np.ndarray | list[bytes]) -> None:
    """Append one output: a list of bytes (BYTES [n]) or a float array (FP32, its shape)."""
    tensor = response.outputs.add(name=name)
    if isinstance(value, list):
        tensor.datatype = "BYTES"
        tensor.shape.append(len(value))
        response.raw_output_contents.append(join_bytes(value))
    else:
        tensor.datatype = "FP32"
        tensor.shape.extend(value.shape)
        response.raw_output_contents.append(np.ascontiguousarray(value, dtype="<f4").tobytes())


# --- description -------------------------------------------------------------------------
def metadata(name: str, versions: list[str], platform: str, inputs: tuple[TensorSpec, ...],
             outputs: tuple[TensorSpec, ...]) -> service_pb2.ModelMetadataResponse:
    return service_pb2.ModelMetadataResponse(
        name=name, versions=versions, platform=platform,
        inputs=[TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in inputs],
        outputs=[TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
                 for s in outputs])


def model_config(name: str, version: int, platform: str, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], queue_delay_ms: float,
                 parameters: dict[str, str]) -> model_config_pb2.ModelConfig:
    """A Triton ModelConfig: no batch dimension in the tensors (max_batch_size 0) because
    the server batches requests itself; the batcher's delay is in `dynamic_batching`."""
    config = model_config_pb2.ModelConfig(
        name=name, platform=platform, backend="vladapter", max_batch_size=0,
        version_policy=model_config_pb2.ModelVersionPolicy(
            specific=model_config_pb2.ModelVersionPolicy.Specific(versions=[version])),
        input=[model_config_pb2.ModelInput(name=s.name, data_type=CONFIG_TYPES[s.datatype],
                                           dims=s.shape, optional=len(inputs) > 1)
               for s in inputs],
        output=[model_config_pb2.ModelOutput(name=s.name, data_type=CONFIG_TYPES[s.datatype],
                                             dims=s.shape) for s in outputs],
        dynamic_batching=model_config_pb2.ModelDynamicBatching(
            max_queue_delay_microseconds=int(queue_delay_ms * 1000)))
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config
