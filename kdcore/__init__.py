"""Shared core of the toolkit: modelling glue over HF encoders, the training runtime, CLI plumbing."""

__version__ = "0.1.0"
