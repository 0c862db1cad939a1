"""`adapter-serve --ray` settings: flags and YAML keys, the Ray Serve options they become,
deploy/fleet.yaml, and bad settings that exit 2 with one line before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import yaml

from serving.cli import build_parser, main
from serving.config import ServeConfig, from_args
from serving.fleet.app import build, initial_state, replica_options, replica_settings
from serving.fleet.proxy import SERVICER_FUNCTIONS
from serving.fleet.state import Served

FLEET_YAML = Path(__file__).resolve().parents[2] / "deploy" / "fleet.yaml"


def _config(*argv: str) -> ServeConfig:
    args = build_parser().parse_args(list(argv))
    del args.log_level
    return from_args(args)


def test_fleet_flags_become_ray_serve_options():
    config = _config("--ray", "--replicas", "3", "--replica-cpus", "0.5", "--replica-gpus",
                     "1", "--max-batch", "4", "--max-queue", "12", "--grace-s", "9",
                     "--device-slots", "6", "--ray-address", "ray://head:10001")
    assert (config.ray, config.replicas, config.ray_address) == (True, 3, "ray://head:10001")
    options = replica_options(config)
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["max_ongoing_requests"] == 4 + 12  # the engine's own bound
    assert options["graceful_shutdown_timeout_s"] == 9
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 1.0}
    scaled = replica_options(_config("--ray", "--min-replicas", "1", "--max-replicas", "5",
                                     "--max-batch", "4"))
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 5,
                                            "target_ongoing_requests": 4}
    inner = replica_settings(config)  # replicas do not get the fleet's size
    assert (inner.replicas, inner.max_replicas, inner.device_slots) == (1, None, 6)


def test_start_record_resolves_the_load_references(published):
    config = ServeConfig(registry=published.root, load=("alpha", "beta:1", "gamma@latest"))
    record = initial_state(config)
    assert record.generation == 1  # a new replica (generation 0) applies it
    assert record.adapters == {"alpha": Served(2), "beta": Served(1), "gamma": Served(1)}


def test_the_deploy_yaml_builds_the_fleet(published):
    spec = yaml.safe_load(FLEET_YAML.read_text())
    assert spec["grpc_options"]["grpc_servicer_functions"] == SERVICER_FUNCTIONS
    app = spec["applications"][0]
    assert app["import_path"] == "serving.fleet.app:build"
    args = {**app["args"], "registry": published.root, "backbone": "tiny",
            "load": ["alpha", "beta"]}
    assert build(args) is not None  # every key is an adapter-serve setting
    with pytest.raises(ValueError, match="replica_count"):
        build({**args, "replica_count": 2})


@pytest.mark.parametrize("argv, words", [
    (["--replicas", "0"], "--replicas must be at least 1"),
    (["--min-replicas", "2"], "--min-replicas and --max-replicas go together"),
    (["--min-replicas", "3", "--max-replicas", "2"], "--min-replicas <= --max-replicas"),
    (["--tls-cert", "c.pem", "--tls-key", "k.pem"], "plaintext"),
    (["--load", "nobody"], "nobody"),
    (["--load", "Bad Name"], "invalid name"),
])
def test_bad_fleet_settings_exit_two_with_one_line_before_ray_starts(argv, words, published,
                                                                     capsys):
    assert main(["--ray", "--registry", published.root, *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and err.startswith("adapter-serve: error:")
    assert not ray.is_initialized()
