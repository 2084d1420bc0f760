"""Model families: what the toolkit needs to know about each Hugging Face encoder architecture, in one table."""
from __future__ import annotations


def max_input_positions(config) -> int:
    """Longest input the model's position embeddings allow (RoBERTa-style models offset positions by pad+1)."""
    n = config.max_position_embeddings
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        n -= (config.pad_token_id or 0) + 1
    return n
