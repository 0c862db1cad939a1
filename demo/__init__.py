"""The end-to-end demo (`make demo`): train adapters, publish them, serve them, ask every task.

It sits above every other package (it drives training, the registry and serving in one
process), so that `training` and `serving` never import each other.
"""
