"""MiniLM: the minilm (v1) and minilmv2 distillation methods and their losses, SQuAD, XNLI and UniLM-style seq2seq."""
