"""MiniLM: v1 / v2 self-attention distillation losses, SQuAD, XNLI and UniLM-style seq2seq."""
