"""A huge text cannot stall other requests: every text field is bounded in bytes before the
tokenizer sees it, tokens are counted only up to the limit, and a request being tokenized
holds no lock that another request or the engine waits for."""

from __future__ import annotations

import threading

import grpc
import pytest
from serving_helpers import request_for

from modeling.tasks import TASKS
from serving.limits import TEXT_BYTES_PER_TOKEN, InvalidInput, Limits, RequestChecker

MAX_TEXT_BYTES = Limits().max_text_tokens * TEXT_BYTES_PER_TOKEN  # the server fixture's


class Recording:
    """A tokenizer that records the texts it is asked to encode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []

    def __call__(self, text, *args, **kwargs):
        self.texts.append(text)
        return self.tokenizer(text, *args, **kwargs)


def _text(message, value):
    message.text = value


def _subtitles(message, value):
    message.video.subtitles = value


def _choice(message, value):
    message.choices[1] = value


@pytest.mark.parametrize(("task", "field", "put", "value"), [
    ("vqa", "text", _text, "what " * 1_500_000),  # 7.5 MB: seconds to tokenize
    ("vqa", "text", _text, "é" * (MAX_TEXT_BYTES // 2 + 1)),  # fewer characters than bytes
    ("tvc", "subtitles", _subtitles, "a" * (MAX_TEXT_BYTES + 1)),
    ("tvqa", "choices[1]", _choice, "b" * (MAX_TEXT_BYTES + 1)),
], ids=["huge-text", "multibyte-text", "subtitles", "choice"])
def test_text_field_over_its_byte_limit_is_refused_before_tokenizing(server, inference,
                                                                     monkeypatch, task, field,
                                                                     put, value):
    recording = Recording(server.inference.checker.tokenizer)
    monkeypatch.setattr(server.inference.checker, "tokenizer", recording)
    message = request_for(task, "alpha", seed=3)
    put(message, value)
    with pytest.raises(grpc.RpcError) as caught:
        inference.Predict(message, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field} is more than {MAX_TEXT_BYTES} bytes")
    assert f"max_text_bytes={MAX_TEXT_BYTES}" in caught.value.details()
    assert recording.texts == []


class Blocking(Recording):
    """A tokenizer that stops inside its call on a text holding `marker` until released."""

    def __init__(self, tokenizer, marker: str):
        super().__init__(tokenizer)
        self.marker, self.entered, self.release = marker, threading.Event(), threading.Event()

    def __call__(self, text, *args, **kwargs):
        if self.marker in text:
            self.entered.set()
            self.release.wait(60)
        return super().__call__(text, *args, **kwargs)


def test_a_request_being_tokenized_does_not_stall_other_requests(server, inference,
                                                                 monkeypatch):
    """While one request's text is being tokenized, another request is checked, batched,
    tokenized by the engine and answered (nothing waits on a shared tokenizer lock)."""
    blocking = Blocking(server.inference.checker.tokenizer, marker="shape")
    monkeypatch.setattr(server.inference.checker, "tokenizer", blocking)
    slow = request_for("vqa", "alpha", seed=4)
    slow.text = "what is the shape"
    try:
        pending = inference.Predict.future(slow, timeout=60)
        assert blocking.entered.wait(30)
        # generous: on the old shared lock this call waited for the release, i.e. forever
        answer = inference.Predict(request_for("caption", "alpha", seed=5), timeout=20)
        assert answer.adapter_name == "alpha"
        assert not pending.done()
    finally:
        blocking.release.set()
    assert pending.result().adapter_name == "alpha"


def test_text_of_exactly_max_text_tokens_passes_and_one_more_is_refused(backbone):
    """Tokens are counted with the encoding cut at max_text_tokens + 1: the boundary holds."""
    limit = 12
    checker = RequestChecker(Limits(max_text_tokens=limit), backbone.tokenizer, None,
                             backbone.config)
    spec = TASKS["vqa"]

    def tokens(text: str) -> int:
        return len(backbone.tokenizer(spec.source_text(text, (), ""))["input_ids"])

    words = ["red"]
    while tokens(" ".join(words)) < limit:
        words.append("red")
    fits = " ".join(words)
    assert tokens(fits) == limit
    assert checker.source_text(spec, fits, [], "") == spec.source_text(fits, (), "")
    with pytest.raises(InvalidInput, match=f"more than {limit} tokens; limit max_text_tokens"):
        checker.source_text(spec, fits + " red", [], "")
