"""Where the frozen vision tower runs: torch eager, ONNX Runtime, or a Triton / KServe
server, for every family's tower (CLIP, SigLIP, Florence-2's DaViT + projector, BLIP's ViT).

Every backend computes the same function as `VLBackbone.encode_images` (the backbone's
`image_tokens`):

    pixel_values [n, 3, H, W] float32  ->  features [n, tokens_per_image, feat_dim] float32
    (CLIP / SigLIP: the tower's last_hidden_state, CLIP's CLS dropped, max-pooled to the
    grid by `modeling.visual.tower_grid`; Florence-2: the projector's image tokens; BLIP:
    every ViT state, class token included)

`export_vision_onnx` writes that whole function to one ONNX file with a dynamic batch
axis; input "PIXELS", output "FEATURES" (Triton's names too).
`make_vision_encoder("torch" | "onnxruntime" | "triton", backbone, ...)` picks one.
Hosting the tower as a KServe model (`--serve-vision-model`) is for CLIP / SigLIP only
(`require_vit_tower`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from modeling.backbone import VLBackbone

log = logging.getLogger(__name__)

INPUT_NAME = "PIXELS"
OUTPUT_NAME = "FEATURES"
BACKENDS = ("torch", "onnxruntime", "triton")
# Tried in this order on a GPU; onnxruntime falls back down the list if one fails to load.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"


@runtime_checkable
class VisionEncoder(Protocol):
    """Anything that turns pixels into visual features, like `VLBackbone.encode_images`."""

    name: str

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [n, 3, H, W] float -> features [n, tokens_per_image, feat_dim]
        float32."""
        ...


def _require_tower(backbone: VLBackbone) -> nn.Module:
    if backbone.vision is None:
        raise ValueError("this backbone has no vision tower (it takes precomputed features); "
                         "there is nothing to run or export")
    return backbone.vision


def require_vit_tower(backbone: VLBackbone, what: str) -> None:
    """Refuse `what` (the KServe vision model) for a tower that is not a ViT pooled to a
    grid (Florence-2's DaViT + projector, BLIP's ViT whose every state is a feature)."""
    vision = backbone.config.vision
    if vision is not None and not vision.pools_grid:
        raise ValueError(f"{what} is for CLIP / SigLIP towers, not this backbone's "
                         f"{vision.tower} tower")


class TorchVisionEncoder:
    """The backbone's own tower in torch eager (the reference the others are tested on)."""

    name = "torch"

    def __init__(self, backbone: VLBackbone):
        _require_tower(backbone)
        self.backbone = backbone

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] -> [n, tokens_per_image, feat_dim] on the backbone's device."""
        return self.backbone.encode_images(pixel_values)


class ImageTokens(nn.Module):
    """The exported function: the backbone's own `image_tokens` (CLIP / SigLIP: tower ->
    drop CLS, if any -> max-pool to the grid; Florence-2: DaViT + projector; BLIP: every
    ViT state). Only the tower is a submodule: the LM's weights stay out of the file."""

    def __init__(self, backbone: VLBackbone):
        super().__init__()
        self.tower = _require_tower(backbone)
        self._image_tokens = backbone.image_tokens  # a bound method, not a submodule

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] -> [n, tokens_per_image, feat_dim]."""
        return self._image_tokens(pixel_values)


@contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """Keep a server's INFO log readable: the exporter's optimiser logs every pass at INFO,
    and torch warns that torchvision's ops (which the tower never uses) are unregistered."""
    levels = {"onnxscript": logging.WARNING, "onnx_ir": logging.WARNING,
              "torch.onnx._internal.exporter._registration": logging.ERROR}
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    saved = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            yield
    finally:
        for logger, level in saved.items():
            logger.setLevel(level)


def export_vision_onnx(backbone: VLBackbone, out_path: str | Path,
                       opset: int | None = None) -> Path:
    """Export the backbone's `image_tokens` (`ImageTokens`: the tower, plus pooling where
    the family pools) to `out_path` (one file, the tower's weights inside) and check it.

    Uses torch's dynamo exporter (needs onnxscript); the batch axis is dynamic, the image
    size is fixed at `backbone.config.vision.image_size`. opset None: the exporter's default.
    """
    module = ImageTokens(backbone).eval()
    size = backbone.config.vision.image_size
    parameter = next(module.tower.parameters())
    # Batch 2 in the example: torch.export specialises sizes 0 and 1.
    example = torch.zeros(2, 3, size, size, dtype=parameter.dtype, device=parameter.device)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad(), _quiet_exporter_logs():
        torch.onnx.export(module, (example,), str(out), dynamo=True, external_data=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes=({0: batch},), opset_version=opset, verbose=False)
    import onnx

    onnx.checker.check_model(str(out))
    log.info("exported the vision tower to %s (image %dpx, %d tokens)", out, size,
             backbone.tokens_per_image)
    return out


def choose_providers(available: list[str] | None = None,
                     cuda_available: bool | None = None) -> list[str]:
    """ONNX Runtime providers for this machine, best first.

    onnxruntime-gpu lists CUDA / TensorRT even with no GPU, so the GPU ones are kept only
    when torch also sees a CUDA device. Arguments default to the machine's answers.
    """
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    chosen = [p for p in GPU_PROVIDERS if p in available] if cuda_available else []
    return [*chosen, CPU_PROVIDER]


class OnnxVisionEncoder:
    """An exported tower (see `export_vision_onnx`) in an onnxruntime InferenceSession."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None,
                 intra_op_threads: int | None = None, spin: bool = False):
        """providers None: `choose_providers()`; intra_op_threads None: onnxruntime's default.

        spin: let idle onnxruntime threads busy-wait for the next call. Off by default: the
        LM runs in torch on the same cores right after, and spinning threads slowed torch
        3x in `benchmarks/onnx_vision.py` on a 2-core machine.
        """
        import onnxruntime

        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX model {path} not found (see `adapter-serve "
                                    "export-onnx`)")
        requested = choose_providers() if providers is None else list(providers)
        options = onnxruntime.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=requested)
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = list(self.session.get_inputs()[0].shape)  # ["batch", 3, H, W]
        log.info("onnxruntime vision encoder %s: providers %s (requested %s, cuda %s)",
                 path, self.providers, requested, torch.cuda.is_available())

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] -> [n, tokens_per_image, feat_dim] float32 on the input's device."""
        pixels = pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()
        features = self.session.run(None, {self.input_name: pixels})[0]
        return torch.from_numpy(features).to(pixel_values.device)


class TritonVisionEncoder:
    """The tower served by a Triton / KServe v2 gRPC server (model exported as above)."""

    name = "triton"

    def __init__(self, url: str, model_name: str, input_name: str = INPUT_NAME,
                 output_name: str = OUTPUT_NAME, max_images_per_call: int = 8,
                 timeout_s: float | None = 60.0):
        """url: "host:port" of the server's gRPC endpoint. Images go in calls of at most
        `max_images_per_call` (a 224px image is 0.6 MB of FP32; gRPC servers cap messages)."""
        import tritonclient.grpc as triton_grpc

        self._triton = triton_grpc
        self.client = triton_grpc.InferenceServerClient(url=url)
        self.model_name, self.input_name, self.output_name = model_name, input_name, output_name
        self.max_images_per_call, self.timeout_s = max_images_per_call, timeout_s

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] -> FP32 request(s) -> [n, tokens, feat_dim] on the input's device."""
        step = self.max_images_per_call
        return torch.cat([self._encode_chunk(pixel_values[i:i + step])
                          for i in range(0, pixel_values.shape[0], step)])

    def _encode_chunk(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixels = np.ascontiguousarray(pixel_values.detach().to("cpu", torch.float32).numpy())
        request = self._triton.InferInput(self.input_name, list(pixels.shape), "FP32")
        request.set_data_from_numpy(pixels)
        wanted = self._triton.InferRequestedOutput(self.output_name)
        result = self.client.infer(self.model_name, [request], outputs=[wanted],
                                   client_timeout=self.timeout_s)
        features = result.as_numpy(self.output_name)
        if features is None:
            raise RuntimeError(f"Triton model {self.model_name!r} returned no output "
                               f"{self.output_name!r}")
        return torch.from_numpy(np.array(features, dtype=np.float32)).to(pixel_values.device)


def _check_image_size(encoder: OnnxVisionEncoder, backbone: VLBackbone) -> None:
    vision = backbone.config.vision
    height, width = encoder.input_shape[2:]
    if vision is not None and (height, width) != (vision.image_size, vision.image_size):
        raise ValueError(f"the ONNX model takes {height}x{width} images but the backbone's "
                         f"tower takes {vision.image_size}x{vision.image_size}: re-export it")


def make_vision_encoder(kind: str, backbone: VLBackbone, *, onnx_path: str | Path | None = None,
                        triton_url: str | None = None,
                        triton_model: str | None = None) -> VisionEncoder:
    """The `--vision-backend` named `kind` ("torch", "onnxruntime" or "triton")."""
    if kind == "torch":
        return TorchVisionEncoder(backbone)
    if kind == "onnxruntime":
        if onnx_path is None:
            raise ValueError("--vision-backend onnxruntime needs an ONNX file (--onnx-path); "
                             "write one with `adapter-serve export-onnx`")
        encoder = OnnxVisionEncoder(onnx_path)
        _check_image_size(encoder, backbone)
        return encoder
    if kind == "triton":
        missing = [flag for flag, value in (("--triton-url", triton_url),
                                            ("--triton-model", triton_model)) if not value]
        if missing:
            raise ValueError(f"--vision-backend triton needs {' and '.join(missing)}")
        return TritonVisionEncoder(triton_url, triton_model)
    raise ValueError(f"unknown vision backend {kind!r}; expected one of: {', '.join(BACKENDS)}")
