"""End to end: fine-tune a tiny UniLM on real XSum, decode dev.json with beam 5 + trigram blocking, score it;
exact resume from ckpt-N; an XLM-R-style tokenizer (pad id 1, no token types); bad inputs."""
import itertools
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, make_tiny_model_dir
from kdcore.cli import UserError

from minilm.scripts import decode_seq2seq
from minilm.scripts import eval_seq2seq
from minilm.scripts import run_seq2seq

SRC_LEN, TGT_LEN = 64, 24


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, bert_tokenizer):
    return make_tiny_model_dir(tmp_path_factory.mktemp("s2s_tiny"), tokenizer=bert_tokenizer, hidden=32, heads=4)


def _train_args(train_file, out, model, steps, save_steps, extra=()):
    return ["--train_file", train_file, "--output_dir", str(out), "--model_type", "bert",
            "--model_name_or_path", model, "--do_lower_case",
            "--max_source_seq_length", str(SRC_LEN), "--max_target_seq_length", str(TGT_LEN),
            "--per_gpu_train_batch_size", "8", "--gradient_accumulation_steps", "1",
            "--learning_rate", "5e-3", "--num_warmup_steps", "3", "--num_training_steps", str(steps),
            "--save_steps", str(save_steps), "--logging_steps", "5", *extra]


@pytest.fixture(scope="module")
def xsum_run(tmp_path_factory, tiny_dir, shared_data):
    out = tmp_path_factory.mktemp("s2s_xsum")
    train_file = os.path.join(shared_data, "seq2seq", "xsum", "train.json")
    run_seq2seq.main(_train_args(train_file, out, tiny_dir, steps=30, save_steps=15))
    return out


def test_finetune_writes_ckpts_and_learns(xsum_run):
    from transformers import AutoModelForMaskedLM

    out = xsum_run
    assert os.path.isdir(out / "ckpt-15") and os.path.isdir(out / "ckpt-30")
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert log[-1]["step"] == 30
    assert log[-1]["nll"] < log[0]["nll"] - 1.0  # it learns the target distribution
    # ordinary save_pretrained folders with the tokenizer; the head is tied to the word embeddings
    model, info = AutoModelForMaskedLM.from_pretrained(out / "ckpt-30", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert os.path.isfile(out / "tokenizer.json") and os.path.isfile(out / "model.safetensors")
    from safetensors import safe_open

    with safe_open(str(out / "cached_features_for_training.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "kd-seq2seq-features-v1"


def test_decode_dev_beam5_trigram_blocking_and_score(xsum_run, shared_data, bert_tokenizer):
    out = xsum_run
    dev = os.path.join(shared_data, "seq2seq", "xsum", "dev.json")
    common = ["--model_type", "bert", "--tokenizer_name", str(out), "--input_file", dev, "--do_lower_case",
              "--model_path", str(out / "ckpt-30"), "--max_seq_length", str(SRC_LEN + TGT_LEN),
              "--max_tgt_length", str(TGT_LEN), "--batch_size", "8", "--beam_size", "5", "--length_penalty", "0",
              "--forbid_duplicate_ngrams", "--mode", "s2s", "--forbid_ignore_word", ".", "--min_len", "6"]
    decode_seq2seq.main(common + ["--split", "dev", "--need_score_traces"])
    pred_file = str(out / "ckpt-30") + ".dev"
    lines = open(pred_file, encoding="utf-8").read().split("\n")[:-1]
    assert len(lines) == 40 and all(len(line.split()) >= 1 for line in lines)
    traces = json.load(open(pred_file + ".trace.json"))
    assert traces["num_samples"] == 40
    period = bert_tokenizer.convert_tokens_to_ids(".")
    for trace in traces["traces"]:
        ids = trace["pred_ids"]
        assert len(ids) >= 6
        grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2) if period not in ids[i:i + 3]]
        assert len(grams) == len(set(grams))  # trigram blocking (tri-grams with "." are exempt)
        assert all(len(s["wids"]) == 5 for s in trace["steps"][1:])
    # the cache changes nothing: the same lines when recomputing everything every step
    decode_seq2seq.main(common + ["--subset", "8", "--decoder", "recompute", "--output_file", str(out / "recompute.txt")])
    assert open(out / "recompute.txt", encoding="utf-8").read().split("\n")[:8] == lines[:8]

    scores = eval_seq2seq.main(["--task", "xsum", "--pred", pred_file, "--gold", dev, "--split", "dev"])
    saved = json.load(open(pred_file + ".scores.json"))
    assert saved == scores and saved["count"] == 40
    for key in ("rouge1", "rouge2", "rougeL"):
        assert 0.0 <= saved[key] <= 100.0
    assert saved["rouge1"] > 0.0


def test_seed_style_files_and_exact_resume_from_ckpt(tmp_path, tiny_dir, shared_data, packaged_teacher):
    """The MiniLM README's form (bare .bin weights with "bert." keys + --config_name + a vocab.txt, a .pt cache
    name), and: 6 steps straight == 3 steps, stop, resume from ckpt-3 (noise, dropout and data order included)."""
    from safetensors.torch import load_file

    weights = str(tmp_path / "minilm-tiny-uncased.bin")
    torch.save({"bert." + k: v for k, v in load_file(os.path.join(tiny_dir, "model.safetensors")).items()}, weights)
    seed_files = ["--config_name", os.path.join(tiny_dir, "config.json"),
                  "--tokenizer_name", os.path.join(packaged_teacher, "vocab.txt")]
    train_file = str(tmp_path / "train.json")
    with open(os.path.join(shared_data, "seq2seq", "xsum", "train.json"), encoding="utf-8") as f:
        open(train_file, "w", encoding="utf-8").writelines(itertools.islice(f, 20))
    cache = str(tmp_path / "xsum_train.uncased.features.pt")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = ["--cached_train_features_file", cache, "--per_gpu_train_batch_size", "4", *seed_files]
    run_seq2seq.main(_train_args(train_file, straight, weights, steps=6, save_steps=3, extra=extra))
    os.makedirs(resumed)
    shutil.copytree(straight / "ckpt-3", resumed / "ckpt-3")
    run_seq2seq.main(_train_args(train_file, resumed, weights, steps=6, save_steps=3, extra=extra))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(str(straight / "ckpt-3" / "model.safetensors"))
    assert any(not torch.equal(a[k], first[k]) for k in a)  # steps 4-6 did change the weights


def _spm_tokenizer_dir(base, shared_data):
    """A real SentencePiece BPE model trained here on XSum text, as an XLM-R tokenizer (pad 1, <s> 0, </s> 2)."""
    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer

    folder = base / "xlmr_tok"
    os.makedirs(folder)
    with open(os.path.join(shared_data, "seq2seq", "xsum", "train.json"), encoding="utf-8") as f:
        text = [json.loads(line)["src"] for line in itertools.islice(f, 120)]
    (base / "corpus.txt").write_text("\n".join(text), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(base / "corpus.txt"), model_prefix=str(base / "sp"), vocab_size=600,
                                   model_type="bpe", character_coverage=1.0, minloglevel=2, num_threads=1)
    shutil.copyfile(base / "sp.model", folder / "sentencepiece.bpe.model")
    tok = XLMRobertaTokenizer.from_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return str(folder), tok


def test_xlmr_style_tokenizer_end_to_end(tmp_path, shared_data):
    tok_dir, tok = _spm_tokenizer_dir(tmp_path, shared_data)
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) == (1, 0, 2)
    model_dir = make_tiny_model_dir(tmp_path / "xlmr", model_type="xlm-roberta", tokenizer=tok, hidden=32, heads=4)
    train_file = str(tmp_path / "train.json")
    with open(os.path.join(shared_data, "seq2seq", "xsum", "train.json"), encoding="utf-8") as f:
        open(train_file, "w", encoding="utf-8").writelines(itertools.islice(f, 16))
    out = tmp_path / "out"
    args = _train_args(train_file, out, model_dir, steps=4, save_steps=0, extra=["--tokenizer_name", tok_dir])
    args[args.index("--model_type") + 1] = "xlm-roberta"
    args.remove("--do_lower_case")
    result = run_seq2seq.main(args)
    assert result.global_step == 4 and all(v == v for v in result.last_losses.values())  # no NaN
    decode_seq2seq.main(["--model_type", "xlm-roberta", "--model_path", str(out), "--input_file", train_file,
                         "--output_file", str(tmp_path / "pred.txt"), "--subset", "4", "--max_seq_length", "80",
                         "--max_tgt_length", "12", "--beam_size", "2", "--forbid_duplicate_ngrams", "--min_len", "3"])
    lines = open(tmp_path / "pred.txt", encoding="utf-8").read().split("\n")[:-1]
    assert len(lines) == 4 and all(line.strip() for line in lines)
    assert not any("<pad>" in line or "</s>" in line for line in lines)


def test_bad_inputs(tmp_path, tiny_dir, xsum_run):
    model = str(xsum_run)
    base = ["--model_path", model, "--output_file", str(tmp_path / "o.txt"), "--max_seq_length", "88",
            "--max_tgt_length", "8"]
    no_src = tmp_path / "nosrc.json"
    no_src.write_text('{"src": "a b c"}\n{"tgt": "x"}\n')
    with pytest.raises(UserError, match="nosrc.json:2"):
        decode_seq2seq.main(base + ["--input_file", str(no_src)])
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(UserError, match="no examples"):
        decode_seq2seq.main(base + ["--input_file", str(empty)])
    good = tmp_path / "good.json"
    good.write_text('{"src": "a b c"}\n')
    no_weights = tmp_path / "ckpt-7"
    os.makedirs(no_weights)
    shutil.copyfile(os.path.join(model, "config.json"), no_weights / "config.json")
    with pytest.raises(UserError, match="no model.safetensors"):
        decode_seq2seq.main(["--model_path", str(no_weights), "--tokenizer_name", model, "--input_file",
                             str(good), "--split", "dev", "--max_seq_length", "88", "--max_tgt_length", "8"])
    with pytest.raises(UserError, match="no masked-LM head"):  # a pre-trained encoder, not a fine-tuned model
        decode_seq2seq.main(base[2:] + ["--model_path", tiny_dir, "--input_file", str(good)])
    assert not os.path.exists(tmp_path / "o.txt")  # no partial output
    with pytest.raises(UserError, match="exceeds the 128 positions"):
        run_seq2seq.main(_train_args(str(no_src), tmp_path / "x", tiny_dir, 1, 0)
                         + ["--max_source_seq_length", "120"])
    # the scripts turn it into one line and exit code 2
    proc = subprocess.run([sys.executable, os.path.join(REPO, "decode_seq2seq.py"), *base, "--input_file", str(empty)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("decode_seq2seq.py: error: --input_file")
