"""The Ray Serve application of a fleet, and `adapter-serve --ray`.

    build(args)         `serve run` / `serve deploy` entry (import_path
                        `serving.fleet.app:build`); args: adapter-serve settings
                        (ServeConfig keys, as in `adapter-serve --config`)
    application(config) the same from a ServeConfig: a FleetController (one replica, the
                        record) and AdapterReplica (`replicas`, or autoscaling between
                        min_replicas and max_replicas on ongoing requests)
    serve_fleet(config) the CLI: join RAY_ADDRESS / --ray-address or start a local Ray
                        cluster, start Ray Serve's gRPC proxy on `port` with our services,
                        deploy, run until SIGTERM / SIGINT, then drain and stop

Replica settings come from the adapter-serve ones: `max_ongoing_requests` is the engine's
own bound (max_batch running + max_queue waiting; Ray Serve queues the rest and its
autoscaler scales on them), `graceful_shutdown_timeout_s` is `grace_s` (a replica scaled
down answers the calls it holds first), the multiplexed cache holds `device_slots`
adapters (`--host-adapters` with `--load-on-demand`: serving.fleet.replica.
multiplexed_models), and `replica_cpus` / `replica_gpus` are what each replica reserves.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from adapters_registry import Registry
from adapters_registry.names import parse_ref
from serving.config import ServeConfig
from serving.fleet.controller import FleetController
from serving.fleet.proxy import SERVICER_FUNCTIONS
from serving.fleet.replica import AdapterReplica
from serving.fleet.state import FleetState, Served
from serving.signals import stop_requested

log = logging.getLogger("vladapter.fleet")

APP_NAME = "vladapter"
CONTROLLER, REPLICA = "FleetController", "AdapterReplica"
# Ray Serve gives only applications with a route prefix an endpoint its gRPC proxy routes to.
ROUTE_PREFIX = f"/{APP_NAME}"
HEALTH_CHECK_PERIOD_S = 5.0


def initial_state(config: ServeConfig) -> FleetState:
    """The record at start: each `--load` reference resolved in the registry (generation 1,
    so a new replica, at generation 0, applies it). Bad references fail here, before
    anything is deployed (InvalidName, NotFound)."""
    registry = Registry(config.registry)
    served = {}
    for text in config.load:
        ref = parse_ref(text)
        served[ref.name] = Served(registry.resolve(ref).version)
    return FleetState(1, served)


def replica_options(config: ServeConfig) -> dict[str, Any]:
    """AdapterReplica's Ray Serve deployment options from the adapter-serve settings."""
    options: dict[str, Any] = {
        "name": REPLICA,
        "max_ongoing_requests": config.max_batch + config.max_queue,
        "graceful_shutdown_timeout_s": config.grace_s,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "ray_actor_options": {"num_cpus": config.replica_cpus,
                              "num_gpus": config.replica_gpus}}
    if config.max_replicas is None:
        options["num_replicas"] = config.replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": config.min_replicas, "max_replicas": config.max_replicas,
            "target_ongoing_requests": config.target_ongoing_requests or config.max_batch}
    return options


def replica_settings(config: ServeConfig) -> ServeConfig:
    """What a replica is built with: the settings less those of the fleet's size, which
    Ray Serve applies (num_replicas, autoscaling_config); a replica's arguments do not
    depend on how many there are."""
    return replace(config, replicas=1, min_replicas=None, max_replicas=None,
                   target_ongoing_requests=None, ray_address=None)


def application(config: ServeConfig):
    """The fleet as a Ray Serve application (ingress: AdapterReplica)."""
    from ray import serve

    config.check_fleet()
    controller = serve.deployment(FleetController, name=CONTROLLER, num_replicas=1,
                                  max_ongoing_requests=100_000,
                                  ray_actor_options={"num_cpus": 0})
    replica = serve.deployment(AdapterReplica, **replica_options(config))
    return replica.bind(replica_settings(config), controller.bind(initial_state(config)))


def build(args: dict[str, Any]):
    """`serve run` / `serve deploy` application builder: args are adapter-serve settings."""
    return application(ServeConfig.from_mapping(dict(args)))


def start_ray(config: ServeConfig) -> None:
    """Join the configured cluster (or start a local one) and start Ray Serve with our
    services on its gRPC proxy (`port`); a running Serve keeps its own proxy settings."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    if not ray.is_initialized():  # a caller (tests, a notebook) may have joined already
        ray.init(address=config.ray_address, logging_level=logging.WARNING)
    serve.start(http_options=HTTPOptions(port=config.http_port),
                grpc_options=gRPCOptions(port=config.port,
                                         grpc_servicer_functions=SERVICER_FUNCTIONS))


def serve_fleet(config: ServeConfig) -> int:
    """`adapter-serve --ray`: deploy, run until SIGTERM or SIGINT, then drain; 0."""
    import ray
    from ray import serve

    app = application(config)  # a bad setting or --load reference fails before Ray starts
    start_ray(config)
    done = stop_requested()
    try:
        serve.run(app, name=APP_NAME, route_prefix=ROUTE_PREFIX)
        print(f"adapter-serve: {APP_NAME} on Ray Serve, gRPC proxy on port {config.port}",
              flush=True)
        done.wait()
        serve.delete(APP_NAME)  # replicas drain their calls (grace_s) and stop
    finally:
        ray.shutdown()
    return 0
