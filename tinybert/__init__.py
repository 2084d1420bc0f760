"""TinyBERT: corpus pregeneration, general distillation losses, data augmentation, task distillation, GLUE."""
