"""The recipe that trains the default model on the world: text encoder, VAE, then the two experts.

`python -m training --out DIR` (or `t2v model train --out DIR`) runs it from a seed and writes
the diffusers layout; `training.recipe` says the order, each stage has a module of its own.
`training.lora` (`t2v model train-lora`) trains a style adapter for the shipped model.
"""
