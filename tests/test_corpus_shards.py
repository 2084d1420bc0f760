"""Binary corpus shards and packed sequences: what pregenerate_training_data.py writes by default, read back."""
import json
import os

import numpy as np
import pytest
import torch

from tinybert.scripts import pregenerate_training_data as script
from kdcore.cli import UserError
from kdcore.shards import ShardedRows, ShardWriter, token_dtype
from kdcore.pregenerated_data import PackedBlocks, PregeneratedTrainingData, is_packed


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, shared_data):
    """Two real text files (slices of wiki.txt), so pregeneration reads a folder of many inputs."""
    folder = tmp_path_factory.mktemp("corpus")
    with open(os.path.join(shared_data, "corpus", "wiki.txt"), encoding="utf-8") as f:
        text = f.read(160_000)
    docs = [d for d in text.split("\n\n") if d.strip()][:-1]
    half = len(docs) // 2
    (folder / "a.txt").write_text("\n\n".join(docs[:half]) + "\n", encoding="utf-8")
    (folder / "b.txt").write_text("\n\n".join(docs[half:]) + "\n", encoding="utf-8")
    return folder


def _pregenerate(corpus, teacher, out, *extra):
    script.main(["--train_corpus", str(corpus), "--bert_model", teacher, "--do_lower_case", "--output_dir", str(out),
                 "--max_seq_len", "64", "--masked_lm_prob", "0.15", "--epochs_to_generate", "2", *extra])
    return str(out)


def test_shard_writer_round_trip_and_dtypes(tmp_path):
    assert token_dtype(30522) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(250002) == np.uint32
    w = ShardWriter(str(tmp_path / "s0"), {"ids": np.uint32, "pos": np.uint16}, {"flag": np.uint8})
    rows = [([70000, 1, 2], [0], 1), ([], [], 0), ([5], [3, 4], 1)]
    for ids, pos, flag in rows:
        w.add(ids=ids, pos=pos, flag=flag)
    info = w.close()
    assert info == {"prefix": "s0", "rows": 3}
    reader = ShardedRows(str(tmp_path), [info, info], ["ids", "pos"], ["flag"])  # the same shard twice
    assert len(reader) == 6
    for i in range(6):
        ids, pos, flag = rows[i % 3]
        got = reader.row(i)
        assert got["ids"].tolist() == ids and got["pos"].tolist() == pos and got["flag"] == flag
    with pytest.raises(ValueError, match="outside"):
        ShardWriter(str(tmp_path / "s1"), {"ids": np.uint16}).add(ids=[70000])
    with pytest.raises(UserError, match="does not hold the 4 rows"):
        ShardedRows(str(tmp_path), [{"prefix": "s0", "rows": 4}], ["ids"]).row(0)


def test_shards_hold_exactly_the_json_instances(tmp_path, corpus_dir, packaged_teacher, bert_tokenizer):
    """Default binary output and --output_format json (TinyBERT's files) give the same items, token for token,
    with 1 or 2 workers; the shard epoch is a folder of .npy files and a manifest, no JSON lines."""
    shards = _pregenerate(corpus_dir, packaged_teacher, tmp_path / "shards", "--num_workers", "2")
    json_out = _pregenerate(corpus_dir, packaged_teacher, tmp_path / "json", "--output_format", "json")
    assert sorted(os.listdir(shards)) == ["epoch_0", "epoch_0_metrics.json", "epoch_1", "epoch_1_metrics.json"]
    manifest = json.load(open(os.path.join(shards, "epoch_0_metrics.json")))
    assert manifest["format"] == "shards" and manifest["fields"]["input_ids"] == "uint16"
    assert sum(s["rows"] for s in manifest["shards"]) == manifest["num_training_examples"]
    a = PregeneratedTrainingData(shards, bert_tokenizer, num_train_epochs=2, shuffle=False, with_lm_labels=True)
    b = PregeneratedTrainingData(json_out, bert_tokenizer, num_train_epochs=2, shuffle=False, with_lm_labels=True)
    assert len(a) == len(b) > 100 and a.offsets == b.offsets
    masked = 0
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), (i, k)
        masked += int((x["lm_label_ids"] >= 0).sum())
    assert masked > 100 and 1 in a[0]["token_type_ids"].tolist()


def test_sharded_data_errors(tmp_path, corpus_dir, packaged_teacher, bert_tokenizer):
    from transformers import BertTokenizerFast

    out = _pregenerate(corpus_dir, packaged_teacher, tmp_path / "o", "--max_documents", "4", "--epochs_to_generate", "1")
    vocab = tmp_path / "vocab.txt"  # another vocabulary: ids would mean other tokens
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a"]) + "\n")
    with pytest.raises(UserError, match="another vocabulary"):
        PregeneratedTrainingData(out, BertTokenizerFast(str(vocab)))[0]
    shard = json.load(open(os.path.join(out, "epoch_0_metrics.json")))["shards"][0]["prefix"]
    os.remove(os.path.join(out, shard + ".input_ids.npy"))
    with pytest.raises(UserError, match="is missing"):
        PregeneratedTrainingData(out, bert_tokenizer)[0]
    os.remove(os.path.join(out, "epoch_0_metrics.json"))  # an interrupted pregeneration: no manifest
    with pytest.raises(UserError, match="did not finish"):
        PregeneratedTrainingData(out, bert_tokenizer)


def test_packed_sequences_are_the_running_text_in_fixed_blocks(tmp_path, corpus_dir, packaged_teacher,
                                                                bert_tokenizer):
    out = tmp_path / "packed"
    script.main(["--train_corpus", str(corpus_dir / "*.txt"), "--bert_model", packaged_teacher, "--do_lower_case",
                 "--output_dir", str(out), "--max_seq_len", "32", "--packed_sequences"])
    assert is_packed(str(out)) and sorted(os.listdir(out)) == ["packed", "packed_metrics.json"]
    blocks = PackedBlocks(str(out), bert_tokenizer, max_positions=512)
    cls, sep = bert_tokenizer.cls_token_id, bert_tokenizer.sep_token_id
    running = []
    for i in range(len(blocks)):
        item = blocks[i]
        ids = item["input_ids"].tolist()
        assert ids[0] == cls and ids[-1] == sep and len(ids) <= 32
        assert (i == len(blocks) - 1) or len(ids) == 32
        assert item["attention_mask"].sum() == len(ids) and item["token_type_ids"].sum() == 0
        running += ids[1:-1]
    # the blocks are the documents' tokens in order, each document followed by [SEP]
    want = []
    for name in ("a.txt", "b.txt"):
        from tinybert.corpus import iter_corpus_documents

        for doc in iter_corpus_documents([str(corpus_dir / name)], "auto"):
            for sentence in doc:
                want += bert_tokenizer(sentence.lower(), add_special_tokens=False)["input_ids"]
            want.append(sep)
    assert running == want[:len(running)] and len(want) - len(running) <= 1
    with pytest.raises(UserError, match="packed sequences"):
        PregeneratedTrainingData(str(out), bert_tokenizer)


def test_minilmv2_distils_from_packed_sequences(tmp_path, packaged_teacher, shared_data):
    """general_distill.py reads packed sequences (shuffled by the trainer) and the student learns from them."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from pipelines.scripts import general_distill

    corpus = tmp_path / "wiki_slice.txt"
    with open(os.path.join(shared_data, "corpus", "wiki.txt"), encoding="utf-8") as f:
        corpus.write_text(f.read(12_000), encoding="utf-8")
    data = tmp_path / "packed"
    script.main(["--train_corpus", str(corpus), "--bert_model", packaged_teacher, "--do_lower_case",
                 "--output_dir", str(data), "--max_seq_len", "48", "--packed_sequences"])
    blocks = json.load(open(data / "packed_metrics.json"))["num_blocks"]
    assert blocks >= 40
    out = tmp_path / "out"
    result = general_distill.main([
        "--pregenerated_data", str(data), "--teacher_model", packaged_teacher, "--distill_method", "minilmv2",
        "--student_model", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                        "minilm_L3xH384.json"),
        "--output_dir", str(out), "--train_batch_size", "8", "--max_steps", "12", "--learning_rate", "1e-3",
        "--warmup_proportion", "0", "--logging_steps", "1", "--eval_step", "0"])
    assert result.global_step == 12
    records = [json.loads(line) for line in open(out / "train_log.jsonl")]
    qq = [r["qq"] for r in records if "qq" in r]
    assert len(qq) == 12 and sum(qq[-3:]) < 0.9 * sum(qq[:3])
    assert os.path.isfile(out / "model.safetensors")
