"""Many replicas on Ray Serve: one endpoint, adapter-affinity routing, fleet-wide hot-swap.

    client --(vladapter.v1 / KServe v2, metadata multiplexed_model_id = adapter ref)-->
    Ray Serve gRPC proxy (proxy.py) --(routes by multiplexed id)--> AdapterReplica x N
                                                                    (replica.py)
    AdapterReplica  the single server's stack (serving.stack) and servicers
    FleetController the one record of what every replica serves (controller.py, state.py)
    Watcher         each replica's thread that converges its lifecycle to that record

Ray Serve places, routes, scales (on ongoing requests) and restarts replicas; nothing here
routes or manages a cluster. `app.py` builds the application for `adapter-serve --ray` and
for `serve run` / `serve deploy` (deploy/fleet.yaml). Needs the `ray` extra.
"""
