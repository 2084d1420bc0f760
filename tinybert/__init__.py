"""TinyBERT: the tinybert distillation method and its losses, corpus pregeneration, data augmentation, task
distillation, GLUE."""
