"""Vision backends: the ONNX export of the tiny tower against torch eager (the oracle),
provider choice, the export command, and the Triton request built against a fake client.

The Triton encoder is checked only at the request level here: no KServe / Triton server
runs in these tests.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from modeling.backbone import VLBackbone
from modeling.config import preset
from serving import vision_backends
from serving.vision_backends import (
    OnnxVisionEncoder,
    TorchVisionEncoder,
    TritonVisionEncoder,
    VisionEncoder,
    choose_providers,
    export_vision_onnx,
    make_vision_encoder,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny() -> VLBackbone:
    return VLBackbone.from_config(preset("tiny"), seed=3)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> Path:
    return export_vision_onnx(tiny, tmp_path_factory.mktemp("onnx") / "clip_vision.onnx")


def test_export_has_dynamic_batch_and_names(exported, tiny):
    graph = onnx.load(str(exported)).graph
    (pixels,), (features,) = graph.input, graph.output
    dims = [d.dim_param or d.dim_value for d in pixels.type.tensor_type.shape.dim]
    assert pixels.name == "PIXELS" and features.name == "FEATURES"
    assert isinstance(dims[0], str) and dims[1:] == [3, 32, 32]


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_equals_torch(exported, tiny, batch):
    pixels = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    expected = TorchVisionEncoder(tiny).encode(pixels)
    got = OnnxVisionEncoder(exported).encode(pixels)
    assert got.shape == expected.shape == (batch, tiny.config.image_grid ** 2, 64)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU; with one: "
                    "test_provider_choice_rules")
def test_provider_choice_is_cpu_without_gpu(exported, caplog):
    with caplog.at_level(logging.INFO, logger=vision_backends.__name__):
        encoder = OnnxVisionEncoder(exported)
    assert encoder.providers == ["CPUExecutionProvider"]
    assert "CPUExecutionProvider" in caplog.text


def test_provider_choice_rules():
    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(listed, cuda_available=False) == ["CPUExecutionProvider"]
    assert choose_providers(listed, cuda_available=True) == listed
    assert choose_providers(["CPUExecutionProvider"], cuda_available=True) == \
        ["CPUExecutionProvider"]


def test_backbone_without_tower_is_refused(tmp_path):
    headless = VLBackbone.from_config(preset("vl-bart-base"), device="meta")
    with pytest.raises(ValueError, match="no vision tower"):
        export_vision_onnx(headless, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="no vision tower"):
        make_vision_encoder("torch", headless)
    assert not (tmp_path / "x.onnx").exists()


def test_make_vision_encoder(tiny, exported, tmp_path):
    assert isinstance(make_vision_encoder("torch", tiny), VisionEncoder)
    encoder = make_vision_encoder("onnxruntime", tiny, onnx_path=exported)
    assert encoder.name == "onnxruntime"
    with pytest.raises(ValueError, match="--onnx-path"):
        make_vision_encoder("onnxruntime", tiny)
    with pytest.raises(FileNotFoundError):
        make_vision_encoder("onnxruntime", tiny, onnx_path=tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="--triton-url and --triton-model"):
        make_vision_encoder("triton", tiny)
    with pytest.raises(ValueError, match="--triton-model"):
        make_vision_encoder("triton", tiny, triton_url="localhost:8001")
    with pytest.raises(ValueError, match="expected one of: torch, onnxruntime, triton"):
        make_vision_encoder("tensorflow", tiny)


def test_export_command(tmp_path):
    out = tmp_path / "tower.onnx"
    done = subprocess.run([sys.executable, "-m", "serving.onnx_export", "--backbone", "tiny",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "FEATURES [batch, 4, 64]" in done.stdout
    onnx.checker.check_model(str(out))
    bad = subprocess.run([sys.executable, "-m", "serving.onnx_export", "--backbone", "nope",
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "unknown backbone preset 'nope'" in bad.stderr


class FakeResult:
    def __init__(self, features: np.ndarray):
        self.features = features

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.features if name == "FEATURES" else None


class FakeTritonClient:
    """Records what `infer` receives and answers features [n, 4, 8] = pixel sums."""

    made: list[FakeTritonClient] = []

    def __init__(self, url: str, **kwargs):
        self.url, self.calls = url, []
        FakeTritonClient.made.append(self)

    def infer(self, model_name, inputs, outputs=None, **kwargs):
        self.calls.append((model_name, inputs, outputs))
        (sent,) = inputs
        pixels = np.frombuffer(sent._get_content(), dtype=np.float32).reshape(sent.shape())
        sums = pixels.reshape(pixels.shape[0], -1).sum(1)
        return FakeResult(np.broadcast_to(sums[:, None, None], (len(sums), 4, 8)).copy())


def test_triton_request(tiny, monkeypatch):
    import tritonclient.grpc

    monkeypatch.setattr(tritonclient.grpc, "InferenceServerClient", FakeTritonClient)
    encoder = make_vision_encoder("triton", tiny, triton_url="triton:8001",
                                  triton_model="clip_vision")
    pixels = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    features = encoder.encode(pixels)
    (client,) = FakeTritonClient.made
    (model_name, (sent,), (wanted,)) = client.calls[0]
    assert isinstance(encoder, TritonVisionEncoder) and client.url == "triton:8001"
    assert model_name == "clip_vision"
    assert (sent.name(), sent.shape(), sent.datatype()) == ("PIXELS", [3, 3, 32, 32], "FP32")
    assert wanted.name() == "FEATURES"
    assert features.dtype == torch.float32 and features.shape == (3, 4, 8)
    expected = pixels.float().reshape(3, -1).sum(1)
    torch.testing.assert_close(features[:, 0, 0], expected, atol=1e-3, rtol=0)


def test_a_siglip_tower_exports_without_dropping_a_token(tmp_path):
    from dataclasses import replace

    from modeling.config import VisionConfig

    config = replace(preset("tiny"), vision=VisionConfig(tower="siglip"), image_grid=4)
    siglip = VLBackbone.from_config(config, seed=5)
    exported = export_vision_onnx(siglip, tmp_path / "siglip_vision.onnx")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = TorchVisionEncoder(siglip).encode(pixels)
    # grid 4 over SigLIP's 4x4 patches (no CLS): the features are the patches themselves.
    assert torch.equal(expected, siglip.vision(pixel_values=pixels).last_hidden_state)
    torch.testing.assert_close(OnnxVisionEncoder(exported).encode(pixels), expected,
                               atol=1e-4, rtol=0)
