"""Python clients of adapter-serve: `Client` (blocking) and `AsyncClient` (asyncio).

Both share one request builder and one set of methods (`_Methods`); they differ only in the
channel and in what a call returns: `Client` returns the protobuf response, `AsyncClient`
an awaitable of it (`stream` gives an iterator, resp. an async iterator, of chunks).

    with Client("localhost:50051", token="s3cret") as client:
        answer = client.vqa("cat.jpg", "what animal is this?", "vqa-lora").text

    async with AsyncClient("localhost:50051") as client:
        answer = (await client.caption(pil_image, "caption-adapter", alias="prod")).text

Against a fleet (`adapter-serve --ray`, Ray Serve's gRPC proxy) the same calls work: each
Predict carries its adapter reference as the `multiplexed_model_id` metadata, which the
proxy routes on, so an adapter's requests go to replicas that already hold it, and its
timeout as `vladapter-timeout-s`, so a replica stops waiting for it when the client does.

An image is encoded bytes (JPEG / PNG / WebP), a path to such a file, a PIL image (sent as
PNG), precomputed features (float32 numpy array [tokens, feat_dim]) or an `Image` message.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict, Unpack

import grpc
import numpy as np
from PIL import Image as PILImage

from serving.protos import inference_pb2, inference_pb2_grpc, repository_pb2, repository_pb2_grpc

ImageLike = bytes | str | Path | PILImage.Image | np.ndarray | inference_pb2.Image


def adapter_ref(name: str, *, version: int | None = None,
                alias: str | None = None) -> inference_pb2.AdapterRef:
    """An `AdapterRef`: `name` plus a version or an alias. Neither: Predict serves the
    active version (the one last loaded), Load takes the registry's latest."""
    if version is not None and alias is not None:
        raise ValueError("give a version or an alias, not both")
    if version is not None:
        return inference_pb2.AdapterRef(name=name, version=version)
    if alias is not None:
        return inference_pb2.AdapterRef(name=name, alias=alias)
    return inference_pb2.AdapterRef(name=name)


# The gRPC metadata key Ray Serve's proxy routes on (serving.fleet): requests with the same
# value go to a replica that already holds that adapter.
MULTIPLEXED_MODEL_ID = "multiplexed_model_id"
# The gRPC metadata key that carries a call's timeout past Ray Serve's proxy, which keeps
# gRPC's own deadline to itself: the seconds the client gives the call, as decimal text.
# A replica's deadline counts from the call's arrival (serving.fleet.replica.ProxyContext):
# late by the proxy's routing time, never early, and no clock is shared across machines.
TIMEOUT_KEY = "vladapter-timeout-s"


def multiplexed_id(ref: inference_pb2.AdapterRef) -> str:
    """The adapter reference as text, `NAME`, `NAME:VERSION` or `NAME@ALIAS` (the form
    `parse_adapter_spec` reads): Ray Serve's multiplexed model id of a request."""
    which = ref.WhichOneof("selector")
    if which == "version":
        return f"{ref.name}:{ref.version}"
    if which == "alias" and ref.alias:
        return f"{ref.name}@{ref.alias}"
    return ref.name


def parse_adapter_spec(spec: str) -> tuple[str, int | None, str | None]:
    """Split `NAME`, `NAME@ALIAS` or `NAME:VERSION` into (name, version, alias)."""
    if "@" in spec:
        name, alias = spec.split("@", 1)
        if not name or not alias:
            raise ValueError(f"bad adapter {spec!r}; expected NAME@ALIAS")
        return name, None, alias
    if ":" in spec:
        name, version = spec.rsplit(":", 1)
        if not name or not version.isdigit():
            raise ValueError(f"bad adapter {spec!r}; expected NAME:VERSION (an integer)")
        return name, int(version), None
    if not spec:
        raise ValueError("empty adapter name")
    return spec, None, None


def image_message(image: ImageLike) -> inference_pb2.Image:
    """One `Image` message from bytes, a path, a PIL image or a features array."""
    if isinstance(image, inference_pb2.Image):
        return image
    if isinstance(image, bytes):
        return inference_pb2.Image(encoded=image)
    if isinstance(image, str | Path):
        return inference_pb2.Image(encoded=Path(image).read_bytes())
    if isinstance(image, PILImage.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return inference_pb2.Image(encoded=buffer.getvalue())
    if isinstance(image, np.ndarray):
        if image.ndim != 2:
            raise ValueError(f"features must be [tokens, feat_dim], got shape {image.shape}")
        data = np.ascontiguousarray(image, dtype=np.float32)
        features = inference_pb2.Features(data=data.tobytes(), tokens=data.shape[0],
                                          feat_dim=data.shape[1])
        return inference_pb2.Image(features=features)
    raise TypeError(f"unsupported image type {type(image).__name__}; expected bytes, a path, "
                    "a PIL image or a float32 numpy array")


def predict_request(task: str, adapter: str, *, images: Sequence[ImageLike] = (),
                    frames: Sequence[ImageLike] | None = None, subtitles: str = "",
                    text: str = "", choices: Sequence[str] = (), version: int | None = None,
                    alias: str | None = None, max_new_tokens: int | None = None,
                    num_beams: int | None = None,
                    request_id: str = "") -> inference_pb2.PredictRequest:
    """The `PredictRequest` of every task method; `frames` (not None) makes a video request."""
    request = inference_pb2.PredictRequest(
        task=task, adapter=adapter_ref(adapter, version=version, alias=alias),
        images=[image_message(image) for image in images], text=text, choices=list(choices),
        generation=inference_pb2.GenerationOptions(max_new_tokens=max_new_tokens or 0,
                                                   num_beams=num_beams or 0),
        request_id=request_id)
    if frames is not None:
        request.video.CopyFrom(inference_pb2.Video(
            frames=[image_message(frame) for frame in frames], subtitles=subtitles))
    return request


class RequestOptions(TypedDict, total=False):
    """Keyword options of the task methods."""

    version: int | None  # adapter version (exclusive with alias)
    alias: str | None  # adapter alias ("latest": the highest version); neither: the active one
    max_new_tokens: int | None  # None: the server default
    num_beams: int | None  # None or 1: greedy
    request_id: str  # echoed back in the response


class _Methods:
    """Every client method, written once over `_call`; the clients differ in the channel.

    `_call` returns the response (blocking stubs) or an awaitable / async iterator (aio).
    """

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel, token: str | None,
                 timeout: float) -> None:
        self._channel = channel
        self._inference = inference_pb2_grpc.InferenceStub(channel)
        self._repository = repository_pb2_grpc.RepositoryStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout

    def _call(self, method: Any, request: Any, routing: str = "") -> Any:
        """Invoke one stub method with this client's deadline and token; `routing`: the
        request's adapter reference, sent as Ray Serve's multiplexed model id (a single
        server ignores it). Metadata must be printable ASCII: another reference goes
        without it and gets the server's own answer about its name. The timeout also goes
        as `TIMEOUT_KEY` metadata, for a fleet's replicas (a single server reads gRPC's)."""
        metadata = self._metadata + ((TIMEOUT_KEY, str(float(self._timeout))),)
        if routing and routing.isascii() and routing.isprintable():
            metadata += ((MULTIPLEXED_MODEL_ID, routing),)
        return method(request, timeout=self._timeout, metadata=metadata)

    def predict(self, request: inference_pb2.PredictRequest) -> Any:
        """Send a ready-made request; a `PredictResponse`."""
        return self._call(self._inference.Predict, request, multiplexed_id(request.adapter))

    def stream(self, request: inference_pb2.PredictRequest) -> Any:
        """Send a request and iterate over its `PredictChunk`s (the last has done = true)."""
        return self._call(self._inference.PredictStream, request,
                          multiplexed_id(request.adapter))

    def vqa(self, image: ImageLike, question: str, adapter: str,
            **options: Unpack[RequestOptions]) -> Any:
        """Answer `question` about `image` (VQAv2)."""
        return self.predict(predict_request("vqa", adapter, images=[image], text=question,
                                            **options))

    def gqa(self, image: ImageLike, question: str, adapter: str,
            **options: Unpack[RequestOptions]) -> Any:
        """Answer `question` about `image` (GQA)."""
        return self.predict(predict_request("gqa", adapter, images=[image], text=question,
                                            **options))

    def caption(self, image: ImageLike, adapter: str, **options: Unpack[RequestOptions]) -> Any:
        """Caption `image` (COCO)."""
        return self.predict(predict_request("caption", adapter, images=[image], **options))

    def nlvr2(self, image0: ImageLike, image1: ImageLike, statement: str, adapter: str,
              **options: Unpack[RequestOptions]) -> Any:
        """Whether `statement` is true of the image pair; label "true" or "false"."""
        return self.predict(predict_request("nlvr2", adapter, images=[image0, image1],
                                            text=statement, **options))

    def video_qa(self, frames: Sequence[ImageLike], question: str, choices: Sequence[str],
                 adapter: str, *, task: str = "tvqa", subtitles: str = "",
                 **options: Unpack[RequestOptions]) -> Any:
        """Pick one of `choices` (labels a0..a4) for `question` about a clip (TVQA, How2QA)."""
        return self.predict(predict_request(task, adapter, frames=frames, subtitles=subtitles,
                                            text=question, choices=choices, **options))

    def video_caption(self, frames: Sequence[ImageLike], adapter: str, *, task: str = "tvc",
                      subtitles: str = "", **options: Unpack[RequestOptions]) -> Any:
        """Caption a clip (TVC, YouCook2)."""
        return self.predict(predict_request(task, adapter, frames=frames, subtitles=subtitles,
                                            **options))

    def load(self, name: str, *, version: int | None = None, alias: str | None = None) -> Any:
        """Load an adapter (default alias "latest"); a `LoadResponse`."""
        request = repository_pb2.LoadRequest(adapter=adapter_ref(name, version=version,
                                                                 alias=alias))
        return self._call(self._repository.Load, request)

    def unload(self, name: str) -> Any:
        """Unload every version of `name`; an `UnloadResponse`."""
        return self._call(self._repository.Unload, repository_pb2.UnloadRequest(name=name))

    def index(self, *, ready_only: bool = False) -> Any:
        """Every adapter the server knows; an `IndexResponse`."""
        request = repository_pb2.IndexRequest(ready_only=ready_only)
        return self._call(self._repository.Index, request)

    def status(self, name: str = "") -> Any:
        """The state of `name` (empty: every loaded adapter); a `StatusResponse`."""
        return self._call(self._repository.Status, repository_pb2.StatusRequest(name=name))

    def pin(self, name: str) -> Any:
        """Keep `name` resident (never evicted); a `PinResponse`."""
        return self._call(self._repository.Pin, repository_pb2.PinRequest(name=name))

    def unpin(self, name: str) -> Any:
        """Let `name` be evicted again; a `PinResponse`."""
        return self._call(self._repository.Unpin, repository_pb2.PinRequest(name=name))


class Client(_Methods):
    """Blocking client. Methods return protobuf responses and raise `grpc.RpcError`.

    Args:
        target: `host:port` of the server.
        token: bearer token sent with every call (see `serving.security`).
        credentials: TLS channel credentials (`security.channel_credentials`); None:
            plaintext.
        timeout: deadline of each call in seconds (streams: of the whole stream).
    """

    def __init__(self, target: str = "localhost:50051", *, token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 timeout: float = 30.0) -> None:
        channel = (grpc.secure_channel(target, credentials) if credentials is not None
                   else grpc.insecure_channel(target))
        super().__init__(channel, token, timeout)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient(_Methods):
    """asyncio client (`grpc.aio`): the same methods as `Client`, each to be awaited;
    `stream` returns an async iterator of chunks. Arguments as `Client`.

    Create it inside a running event loop (`async with AsyncClient(...) as client:`).
    """

    def __init__(self, target: str = "localhost:50051", *, token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 timeout: float = 30.0) -> None:
        channel = (grpc.aio.secure_channel(target, credentials) if credentials is not None
                   else grpc.aio.insecure_channel(target))
        super().__init__(channel, token, timeout)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
