"""On Florence-2, image tokens and text share the BART encoder's learned positions
(`BackboneConfig.text_budget`). Served on a tiny Florence-2 with 256 positions and 145
tokens per image (48 px): a request whose visual tokens and text run past them is refused
by the request checker before any model work, on our proto and KServe alike (was an index
error deep in the encoder: INTERNAL), a request at the limit is answered, and NLVR2 (2 x
145 image tokens) is refused as a task this backbone cannot run: at request time and
where an adapter for it is loaded, FAILED_PRECONDITION naming the task and the arithmetic.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from kserve_helpers import kserve_inputs, kserve_parameters
from serving_helpers import WORDS, load_refusal, random_adapter, request_for
from tritonclient.utils import InferenceServerException

from adapters_registry import Registry
from benchmarks.florence2_sizes import sized_config, write_random
from modeling.families import load_backbone
from modeling.recipe import MethodEntry
from modeling.tasks import TASKS
from modeling.tokenizer import build_word_tokenizer
from serving.config import ServeConfig
from serving.protos import inference_pb2, inference_pb2_grpc
from serving.server import Server
from training.artifact import write_artifact

POSITIONS, IMAGE_TOKENS = 256, 145  # the tiny config's BART table; 12 x 12 cells + 1 at 48 px
TEXT_BUDGET = POSITIONS - IMAGE_TOKENS
LORA = [MethodEntry("lora", {"rank": 2}, "single")]
PROMPT = [MethodEntry("prompt_tuning", {"length": 3, "hidden_dim": 8}, "single")]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(backbone, server): a tiny Florence-2 at 48 px serving `alpha` (LoRA) and `prompted`
    (3 prompt vectors) for VQA; `paired` (VQA and NLVR2) is published, not loaded."""
    root = tmp_path_factory.mktemp("florence2-budget")
    config = sized_config("tiny")
    config.vision_config.max_position_embeddings = 12  # the tower's 2-D table: 12 x 12 cells
    vocab = config.text_config.vocab_size
    words = list(dict.fromkeys([w.lower() for w in WORDS] + [f"w{i}" for i in range(vocab)]))
    folder = write_random(root / "model", config, 48,
                          build_word_tokenizer(words[:vocab - 4], "bart", vocab), seed=0)
    backbone = load_backbone(folder)
    assert backbone.tokens_per_image == IMAGE_TOKENS
    registry = Registry(str(root / "store"))
    for name, recipe, tasks in (("alpha", LORA, ["vqa"]), ("prompted", PROMPT, ["vqa"]),
                                ("paired", LORA, ["vqa", "nlvr2"])):
        write_artifact(root / name, random_adapter(backbone, recipe, tasks, 0), backbone, {})
        registry.publish(root / name, name)
    server = Server(ServeConfig(registry=str(root / "store"), host="127.0.0.1", port=0,
                                load=("alpha", "prompted")), backbone=backbone).start()
    yield backbone, server
    server.stop(grace=5)


def _vqa(backbone, tokens: int, adapter: str = "alpha") -> inference_pb2.PredictRequest:
    """A VQA request whose encoder text (prompt and special tokens included) is `tokens`
    tokens long, with one encoded image."""
    body = " ".join(["w1"] * tokens)
    extra = len(backbone.tokenizer(TASKS["vqa"].source_text(body, family="florence2"))[
        "input_ids"]) - tokens
    message = request_for("vqa", adapter, max_new_tokens=2)
    message.text = " ".join(["w1"] * (tokens - extra))
    return message


def _predict(server, message) -> grpc.RpcError | inference_pb2.PredictResponse:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        try:
            return inference_pb2_grpc.InferenceStub(channel).Predict(message, timeout=30)
        except grpc.RpcError as error:
            return error


def _kserve(server, message) -> InferenceServerException:
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(InferenceServerException) as excinfo:
            client.infer(message.adapter.name, kserve_inputs(message),
                         parameters=kserve_parameters(message), client_timeout=30)
    return excinfo.value


def test_text_filling_what_the_image_leaves_is_answered_and_one_token_more_is_refused(served):
    backbone, server = served
    assert _predict(server, _vqa(backbone, TEXT_BUDGET)).adapter_name == "alpha"
    error = _predict(server, _vqa(backbone, TEXT_BUDGET + 1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"text (with the task prompt, choices and subtitles) is "
                                      f"more than {TEXT_BUDGET} tokens")
    assert f"beside {IMAGE_TOKENS} visual tokens" in error.details()
    assert f"{POSITIONS} encoder positions" in error.details()
    refused = _kserve(server, _vqa(backbone, TEXT_BUDGET + 1))
    assert refused.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"more than {TEXT_BUDGET} tokens" in refused.message()


def test_prompt_vectors_take_their_positions_from_the_text_as_in_training(served):
    """The checker lets text fill what the image leaves; the engine cuts it at what the
    adapter's prompt vectors leave too, as training cut it (was INTERNAL: an index error)."""
    backbone, server = served
    assert _predict(server, _vqa(backbone, TEXT_BUDGET, "prompted")).adapter_name == "prompted"


def _features_request(backbone, rows: int) -> inference_pb2.PredictRequest:
    message = request_for("vqa", "alpha", max_new_tokens=2)
    del message.images[:]
    data = np.zeros((rows, backbone.config.feat_dim), dtype="<f4").tobytes()
    message.images.add().features.CopyFrom(inference_pb2.Features(
        data=data, tokens=rows, feat_dim=backbone.config.feat_dim))
    return message


def test_features_whose_tokens_leave_no_room_for_text_are_invalid_argument(served):
    backbone, server = served
    error = _predict(server, _features_request(backbone, POSITIONS - 1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (f"images (features) carry {POSITIONS - 1} visual tokens; the "
                               f"backbone's {POSITIONS} encoder positions, which visual tokens "
                               f"and text share, hold at most {POSITIONS - 2} beside a text")


def test_nlvr2_is_a_task_this_backbone_cannot_run_on_both_protocols(served):
    backbone, server = served
    message = request_for("nlvr2", "alpha")
    expected = (f"task 'nlvr2' cannot run on this backbone: 2 image(s) x {IMAGE_TOKENS} = "
                f"{2 * IMAGE_TOKENS} visual tokens leave 0 of its {POSITIONS} encoder positions")
    error = _predict(server, message)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith(expected)
    refused = _kserve(server, message)
    assert refused.status() == "StatusCode.FAILED_PRECONDITION"
    assert expected in refused.message()


def test_an_adapter_with_a_task_the_backbone_cannot_run_is_refused_at_load(served):
    _, server = served
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        refusal = load_refusal(channel, "paired")
    assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "task 'nlvr2' cannot run on this backbone: 2 image(s) x 145" in refusal.details()
