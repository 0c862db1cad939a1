from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AdapterRef(_message.Message):
    __slots__ = ("name", "version", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    alias: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ...) -> None: ...

class Features(_message.Message):
    __slots__ = ("data", "tokens", "feat_dim")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    FEAT_DIM_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    tokens: int
    feat_dim: int
    def __init__(self, data: _Optional[bytes] = ..., tokens: _Optional[int] = ..., feat_dim: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "features")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    features: Features
    def __init__(self, encoded: _Optional[bytes] = ..., features: _Optional[_Union[Features, _Mapping]] = ...) -> None: ...

class Video(_message.Message):
    __slots__ = ("frames", "subtitles")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    SUBTITLES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[Image]
    subtitles: str
    def __init__(self, frames: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., subtitles: _Optional[str] = ...) -> None: ...

class GenerationOptions(_message.Message):
    __slots__ = ("max_new_tokens", "num_beams")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_BEAMS_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    num_beams: int
    def __init__(self, max_new_tokens: _Optional[int] = ..., num_beams: _Optional[int] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("task", "adapter", "images", "video", "text", "choices", "generation", "request_id")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    task: str
    adapter: AdapterRef
    images: _containers.RepeatedCompositeFieldContainer[Image]
    video: Video
    text: str
    choices: _containers.RepeatedScalarFieldContainer[str]
    generation: GenerationOptions
    request_id: str
    def __init__(self, task: _Optional[str] = ..., adapter: _Optional[_Union[AdapterRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., video: _Optional[_Union[Video, _Mapping]] = ..., text: _Optional[str] = ..., choices: _Optional[_Iterable[str]] = ..., generation: _Optional[_Union[GenerationOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CandidateScore(_message.Message):
    __slots__ = ("label", "log_prob")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LOG_PROB_FIELD_NUMBER: _ClassVar[int]
    label: str
    log_prob: float
    def __init__(self, label: _Optional[str] = ..., log_prob: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "vision_ms", "encode_ms", "decode_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    VISION_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    vision_ms: float
    encode_ms: float
    decode_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., vision_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("text", "label", "scores", "adapter_name", "adapter_version", "timings", "request_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    label: str
    scores: _containers.RepeatedCompositeFieldContainer[CandidateScore]
    adapter_name: str
    adapter_version: int
    timings: Timings
    request_id: str
    def __init__(self, text: _Optional[str] = ..., label: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[CandidateScore, _Mapping]]] = ..., adapter_name: _Optional[str] = ..., adapter_version: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class PredictChunk(_message.Message):
    __slots__ = ("token_text", "done", "response")
    TOKEN_TEXT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    token_text: str
    done: bool
    response: PredictResponse
    def __init__(self, token_text: _Optional[str] = ..., done: _Optional[bool] = ..., response: _Optional[_Union[PredictResponse, _Mapping]] = ...) -> None: ...
