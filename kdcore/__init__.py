"""Shared core of the toolkit: the general-distillation driver and the teacher contract (DistillObjective), the
trainer and its checkpoints, the fine-tuning driver and prediction loop, the model-family table, modelling glue
over HF encoders, CLI plumbing. Imports flow one way: scripts -> tinybert/, minilm/ -> kdcore/."""

__version__ = "0.1.0"
