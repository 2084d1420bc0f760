"""Model families: what the toolkit needs to know about each Hugging Face encoder architecture, in one table.

| family      | HF model_type                      | positions         | token types | layers            | Q / K / V in a layer                      | QK^T is its attention |
|-------------|------------------------------------|-------------------|-------------|-------------------|-------------------------------------------|-----------------------|
| bert        | bert                               | 0..n-1            | if > 1 type | encoder.layer     | attention.self.{query,key,value}          | yes                   |
| roberta     | roberta, xlm-roberta, camembert    | pad+1 .. (offset) | if > 1 type | encoder.layer     | attention.self.{query,key,value}          | yes                   |
| deberta-v2  | deberta-v2 (DeBERTa-v2 and -v3)    | relative          | if > 1 type | encoder.layer     | attention.self.{query,key,value}_proj     | no: + relative terms  |
| distilbert  | distilbert                         | 0..n-1            | none        | transformer.layer | attention.{q,k,v}_lin                     | yes                   |
| modernbert  | modernbert                         | rotary            | none        | layers            | attn.Wqkv (fused: [Q; K; V])              | no: rotary on Q, K    |

`--model_type` (the seed scripts' option) names an input convention, not an architecture (that comes from the
config); MODEL_TYPES is its one table:

| --model_type             | token type ids | tokenizer                          |
|--------------------------|----------------|------------------------------------|
| bert, unilm              | yes            | the model folder's                 |
| minilm                   | no             | XLM-R SentencePiece (multilingual MiniLM: BERT architecture, no segment embeddings) |
| roberta                  | no             | the model folder's                 |
| xlmr (xlm-roberta, xlmroberta) | no       | XLM-R SentencePiece                |

Methods that need the attention scores themselves (TinyBERT's attention MSE, MiniLM v1's attention KL) refuse a
family whose QK^T / sqrt(d) is not its attention, in one line; MiniLMv2's Q-Q / K-K / V-V relations need only the
projections and work with every family. `SelfAttentionCapture` (kdcore.attention_capture) reads Q/K/V where this
table says they live.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UserError


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]
    layers: str  # attribute path of the ModuleList of transformer blocks, from the bare model
    qkv: tuple[str, str, str] | str  # paths of the Q, K, V projections inside a block; one path when fused
    after_qkv: tuple[str, ...]  # block submodules that run after the Q/K/V projections
    after_layers: tuple[str, ...] = ()  # modules of the bare model that run after the last block
    padding_offset_positions: bool = False  # position ids start at pad_token_id + 1 (RoBERTa's convention)
    token_types: bool = True  # the forward takes token_type_ids at all
    qk_is_attention: bool = True  # softmax(QK^T / sqrt(d)) of the captured Q, K is the model's attention
    attention_note: str = ""  # why not, when qk_is_attention is False
    config_names: dict = field(default_factory=dict)  # BERT config field name -> this family's name

    def fused(self) -> bool:
        return isinstance(self.qkv, str)


FAMILIES = (
    ModelFamily("bert", ("bert",), "encoder.layer", ("attention.self.query", "attention.self.key",
                "attention.self.value"), ("attention.output", "intermediate", "output"), ("pooler",)),
    ModelFamily("roberta", ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"), "encoder.layer",
                ("attention.self.query", "attention.self.key", "attention.self.value"),
                ("attention.output", "intermediate", "output"), ("pooler",), padding_offset_positions=True),
    ModelFamily("deberta-v2", ("deberta-v2",), "encoder.layer",
                ("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
                ("attention.output", "intermediate", "output"), qk_is_attention=False,
                attention_note="DeBERTa adds disentangled relative-position terms to QK^T"),
    ModelFamily("distilbert", ("distilbert",), "transformer.layer",
                ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
                ("attention.out_lin", "sa_layer_norm", "ffn", "output_layer_norm"), token_types=False,
                config_names={"intermediate_size": "hidden_dim", "hidden_act": "activation",
                              "hidden_dropout_prob": "dropout", "attention_probs_dropout_prob": "attention_dropout",
                              "layer_norm_eps": None}),
    ModelFamily("modernbert", ("modernbert",), "layers", "attn.Wqkv", ("attn.Wo", "mlp_norm", "mlp"),
                ("final_norm",), token_types=False, qk_is_attention=False,
                attention_note="ModernBERT rotates Q and K (rotary positions) after the projection",
                config_names={"hidden_act": "hidden_activation", "hidden_dropout_prob": "mlp_dropout",
                              "attention_probs_dropout_prob": "attention_dropout", "layer_norm_eps": "norm_eps"}),
)
_BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def family_of(config) -> ModelFamily:
    model_type = getattr(config, "model_type", None)
    if model_type not in _BY_MODEL_TYPE:
        known = ", ".join(sorted(_BY_MODEL_TYPE))
        raise UserError(f"model_type {model_type!r} is not a supported encoder family (supported: {known})")
    return _BY_MODEL_TYPE[model_type]


def require_qk_attention(config, method: str) -> None:
    """One clear line when `method` needs attention scores QK^T / sqrt(d) that this family does not compute."""
    family = family_of(config)
    if not family.qk_is_attention:
        raise UserError(f"--distill_method {method} needs the attention scores softmax(QK^T/sqrt(d)), but "
                        f"{family.attention_note}; use --distill_method minilmv2 (its Q/K/V relations need none)")


def max_input_positions(config) -> int:
    """Longest input the model's position embeddings allow (RoBERTa-style models offset positions by pad+1)."""
    n = config.max_position_embeddings
    if family_of(config).padding_offset_positions:
        n -= (config.pad_token_id or 0) + 1
    return n


def uses_token_type_ids(config) -> bool:
    """Batches carry token_type_ids only for models that take them and have more than one type."""
    return family_of(config).token_types and (getattr(config, "type_vocab_size", 2) or 0) > 1


def set_size_field(config, bert_name: str, value) -> None:
    """Set a student size field given under its BERT name (configs/*.json) in this family's spelling."""
    names = family_of(config).config_names
    name = names.get(bert_name, bert_name)
    if name is not None:
        setattr(config, name, value)
    if bert_name == "num_hidden_layers" and getattr(config, "layer_types", None) is not None:
        config.layer_types = _repeat_layer_pattern(list(config.layer_types), value)


def _repeat_layer_pattern(types: list[str], n: int) -> list[str]:
    """Per-layer attention types for n layers, continuing the teacher's pattern (e.g. ModernBERT's global
    attention every third layer)."""
    full = [i for i, t in enumerate(types) if t == types[0]]
    period = full[1] - full[0] if len(full) > 1 else len(types)
    return [types[i % period] for i in range(n)]


@dataclass(frozen=True)
class ModelType:
    token_type_ids: bool
    sentencepiece_tokenizer: bool  # must be read with XLM-R's SentencePiece tokenizer


MODEL_TYPES = {
    "bert": ModelType(True, False),
    "unilm": ModelType(True, False),  # s2s-ft's name for its BERT-architecture checkpoints
    "minilm": ModelType(False, True),
    "roberta": ModelType(False, False),
    "xlmr": ModelType(False, True),
    "xlm-roberta": ModelType(False, True),
    "xlmroberta": ModelType(False, True),
}


def add_model_type_arg(parser, default: str = "bert", note: str = "") -> None:
    parser.add_argument("--model_type", default=default, type=str.lower, choices=list(MODEL_TYPES),
                        help="Input convention (kdcore/families.py MODEL_TYPES): bert/unilm pass token type ids; "
                        "minilm (BERT architecture) and xlmr read XLM-R's SentencePiece vocabulary; minilm, roberta "
                        "and xlmr pass no token type ids. The architecture comes from the config." + note,
                        identifies=True)


def get_path(module, path: str):
    for name in path.split("."):
        module = getattr(module, name)
    return module
