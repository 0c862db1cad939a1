"""Request bytes that do not parse answer INVALID_ARGUMENT, naming the field where it can.

gRPC Python deserializes a request before any handler runs and, when the deserializer
raises, answers INTERNAL "Exception deserializing request!" (grpc/_server.py,
`_receive_message`). `DecodeErrorInterceptor` rewrites every method handler of every
service on the server (ours, KServe v2, health, reflection):

    request_deserializer   never raises: bytes that do not parse become `Undecodable`
    behaviour              aborts INVALID_ARGUMENT on an `Undecodable` request; on a
                           request stream (ModelStreamInfer) the call ends INVALID_ARGUMENT
                           when such a message arrives, after what came before it

The message names the first proto3 `string` field that is not UTF-8 (protobuf refuses
those) or says where the bytes stop following the wire format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor

MAX_DEPTH = 100  # protobuf's own recursion limit for nested messages


@dataclass(frozen=True)
class Undecodable:
    """What the wrapped deserializer returns for bytes that do not parse."""

    reason: str


class _Malformed(Exception):
    """The bytes break the protobuf wire format."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """-> (value, position after it); at most 10 bytes, as the wire format allows."""
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise _Malformed
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise _Malformed


def _fields(data: bytes) -> Iterator[tuple[int, bytes | None]]:
    """(field number, payload) of each field; the payload of length-delimited ones only."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire, payload = key >> 3, key & 7, None
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            payload, pos = data[pos:pos + length], pos + length
        else:  # groups (3, 4) appear in none of the served protos; 6 and 7 do not exist
            raise _Malformed
        if pos > len(data) or number == 0:
            raise _Malformed
        yield number, payload


def bad_field(data: bytes, descriptor: Descriptor, path: str = "", depth: int = 0) -> str | None:
    """Why `data` is not a `descriptor` message: the first string field that is not UTF-8
    (its dotted path), or the field after which the wire format breaks; None if neither
    is found (the caller then says the bytes do not parse)."""
    if depth > MAX_DEPTH:
        return None
    last = ""
    try:
        for number, payload in _fields(data):
            field = descriptor.fields_by_number.get(number)
            if field is None or payload is None:
                continue
            last = f"{path}{field.name}"
            if field.type == FieldDescriptor.TYPE_STRING:
                payload.decode("utf-8")
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                inner = bad_field(payload, field.message_type, f"{last}.", depth + 1)
                if inner is not None:
                    return inner
    except UnicodeDecodeError:
        return f"field '{last}' is not valid UTF-8"
    except _Malformed:
        return "the bytes break the protobuf wire format" + (f" after field '{last}'"
                                                             if last else "")
    return None


def tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserialize`, returning Undecodable instead of raising."""
    if deserialize is None:
        return None
    message_class = getattr(deserialize, "__self__", None)  # `Message.FromString`
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    name = descriptor.full_name if descriptor is not None else "request message"

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # protobuf's DecodeError, or whatever a custom deserializer raises
            why = bad_field(data, descriptor) if descriptor is not None else None
            return Undecodable(f"request is not a valid {name}: "
                               f"{why or 'the bytes do not parse'}")

    return parse


def refuse(request: Any, context: grpc.ServicerContext) -> None:
    if isinstance(request, Undecodable):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)


def checked_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    for request in requests:
        refuse(request, context)
        yield request


def _checked_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, deserializing tolerantly and refusing Undecodable requests."""
    deserializer = tolerant(handler.request_deserializer)
    serializer = handler.response_serializer
    if handler.request_streaming:
        behaviour = handler.stream_stream if handler.response_streaming \
            else handler.stream_unary

        def streamed(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return behaviour(checked_stream(requests, context), context)

        make = grpc.stream_stream_rpc_method_handler if handler.response_streaming \
            else grpc.stream_unary_rpc_method_handler
        return make(streamed, deserializer, serializer)
    behaviour = handler.unary_stream if handler.response_streaming else handler.unary_unary

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        refuse(request, context)
        return behaviour(request, context)

    make = grpc.unary_stream_rpc_method_handler if handler.response_streaming \
        else grpc.unary_unary_rpc_method_handler
    return make(unary, deserializer, serializer)


class DecodeErrorInterceptor(grpc.ServerInterceptor):
    """Makes request bytes that do not parse INVALID_ARGUMENT on every method."""

    def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        return None if handler is None else _checked_handler(handler)
