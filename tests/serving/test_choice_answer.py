"""An adapter is served in the multiple-choice answer form it was trained with: the
option's label ("a0", VL-Adapter) or the option's own text, summed or averaged per token
(`ChoiceAnswer`), as its manifest records."""

from __future__ import annotations

import grpc
import pytest
from serving_helpers import RECIPES, direct, random_adapter, request_for

from adapters_registry import Registry
from modeling.tasks import ChoiceAnswer
from serving.config import ServeConfig
from serving.protos import inference_pb2_grpc
from serving.server import Server
from training.artifact import write_artifact


def test_each_adapter_is_scored_in_the_answer_form_its_manifest_records(backbone, tmp_path):
    registry = Registry(str(tmp_path / "store"))
    model = random_adapter(backbone, RECIPES["beta"][0], ["tvqa", "how2qa"], 51)
    for answer in ChoiceAnswer:
        manifest = write_artifact(tmp_path / answer.value, model, backbone, {},
                                  choice_answer=answer)
        assert manifest["tasks"]["tvqa"]["choice_answer"] == answer.value
        registry.publish(tmp_path / answer.value, answer.value)
    config = ServeConfig(registry=str(tmp_path / "store"), host="127.0.0.1", port=0,
                         load=tuple(answer.value for answer in ChoiceAnswer))
    server = Server(config, backbone=backbone).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            replies = {answer: stub.Predict(request_for("tvqa", answer.value, seed=3),
                                            timeout=30) for answer in ChoiceAnswer}
    finally:
        server.stop(grace=2)
    message = request_for("tvqa", "text", seed=3)
    choices = list(message.choices)
    assert [s.label for s in replies[ChoiceAnswer.LABEL].scores] == ["a0", "a1", "a2"]
    assert [s.label for s in replies[ChoiceAnswer.TEXT].scores] == choices
    for answer, reply in replies.items():
        text, scores = direct(backbone, model, message, answer)
        assert reply.text == text and reply.text in choices
        assert [s.log_prob for s in reply.scores] == pytest.approx(scores, abs=1e-4)
    # Same weights, other candidate strings: the two forms score differently.
    assert [s.log_prob for s in replies[ChoiceAnswer.TEXT].scores] != pytest.approx(
        [s.log_prob for s in replies[ChoiceAnswer.LABEL].scores], abs=1e-4)
    # Same weights, same strings: text_mean serves each option's summed score over its
    # token count (eos included).
    lengths = [len(backbone.tokenizer(choice)["input_ids"]) for choice in choices]
    assert len(set(lengths)) > 1, "guard: the options must differ in token count"
    assert [s.log_prob for s in replies[ChoiceAnswer.TEXT_MEAN].scores] == pytest.approx(
        [s.log_prob / n for s, n in zip(replies[ChoiceAnswer.TEXT].scores, lengths,
                                       strict=True)], abs=1e-4)
