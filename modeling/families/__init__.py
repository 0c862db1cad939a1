"""Backbone families: each module exposes `detect(folder) -> bool` and
`load(folder) -> VLBackbone` for a Hugging Face folder of its kind."""
