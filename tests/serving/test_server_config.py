"""`adapter-serve` settings: defaults < YAML < flags; bad settings exit 2 with one line."""

from __future__ import annotations

import pytest

from serving.cli import build_parser, main
from serving.config import ServeConfig, from_args


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("registry: /r\nmax_batch: 4\nload: [alpha, beta@prod]\n"
                    "limits: {max_new_tokens: 12, max_beams: 2}\n")
    args = build_parser().parse_args(["--config", str(path), "--max-batch", "16",
                                      "--max-beams", "5", "--load", "gamma:3"])
    del args.log_level
    config = from_args(args)
    assert (config.registry, config.max_batch, config.load) == ("/r", 16, ("gamma:3",))
    assert (config.limits.max_new_tokens, config.limits.max_beams) == (12, 5)
    assert config.port == ServeConfig().port


def test_unknown_yaml_key_is_refused_naming_it(tmp_path, capsys):
    path = tmp_path / "serve.yaml"
    path.write_text("max_bach: 4\n")
    assert main(["--config", str(path)]) == 2
    assert "max_bach" in capsys.readouterr().err


def test_unknown_preset_exits_two(tmp_path, capsys):
    assert main(["--backbone", "enormous", "--registry", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "enormous" in err and err.count("\n") == 1


@pytest.mark.parametrize("flag", ["--help"])
def test_help_lists_the_main_flags(flag, capsys):
    with pytest.raises(SystemExit):
        main([flag])
    out = capsys.readouterr().out
    for name in ("--registry", "--backbone", "--load", "--max-queue-delay-ms", "--cache-bytes",
                 "--tls-cert", "--token-file", "--metrics-port", "--vision-backend",
                 "--onnx-path", "--triton-url", "--triton-model", "--serve-vision-model",
                 "export-onnx"):
        assert name in out


def test_vision_backend_flags_and_yaml(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("vision_backend: onnxruntime\nonnx_path: /models/clip_vision.onnx\n")
    args = build_parser().parse_args(["--config", str(path), "--serve-vision-model"])
    del args.log_level
    config = from_args(args)
    assert (config.vision_backend, config.onnx_path, config.serve_vision_model) == \
        ("onnxruntime", "/models/clip_vision.onnx", "clip_vision")
    args = build_parser().parse_args(["--vision-backend", "triton", "--triton-url", "h:8001",
                                      "--triton-model", "tower", "--serve-vision-model", "v"])
    del args.log_level
    config = from_args(args)
    assert (config.vision_backend, config.triton_url, config.triton_model,
            config.serve_vision_model) == ("triton", "h:8001", "tower", "v")
    assert ServeConfig().vision_backend == "torch" and ServeConfig().serve_vision_model is None


def test_bad_vision_backend_settings_exit_two(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--vision-backend", "tensorflow"])
    assert "invalid choice" in capsys.readouterr().err
    assert main(["--registry", str(tmp_path), "--vision-backend", "onnxruntime"]) == 2
    assert "--onnx-path" in capsys.readouterr().err


def test_export_onnx_subcommand_is_delegated(capsys):
    with pytest.raises(SystemExit):
        main(["export-onnx", "--help"])
    assert "adapter-serve export-onnx" in capsys.readouterr().out


def test_on_demand_flags_and_yaml(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("load_on_demand: true\nhost_adapters: 64\n")
    args = build_parser().parse_args(["--config", str(path), "--host-adapters", "128"])
    del args.log_level
    config = from_args(args)
    assert (config.load_on_demand, config.host_adapters) == (True, 128)
    args = build_parser().parse_args(["--load-on-demand"])
    del args.log_level
    assert from_args(args).load_on_demand and ServeConfig().load_on_demand is False


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_host_adapters_below_one_exits_two_naming_the_flag(value, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--host-adapters", value])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--host-adapters" in err and "positive integer" in err and err.count("\n") == 1
