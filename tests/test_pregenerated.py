"""The reader of TinyBERT's pregenerated data (kdcore/pregenerated_data.py), on files written from real text."""
import json
import os

import pytest
import torch

from kdcore.cli import UserError
from kdcore.pregenerated_data import (
    PregeneratedCollator,
    PregeneratedEpoch,
    PregeneratedTrainingData,
    find_data_epochs,
)
from pregenerated_writer import real_paragraphs, write_pregenerated


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, bert_tokenizer, shared_data):
    return write_pregenerated(tmp_path_factory.mktemp("pregen"), bert_tokenizer, real_paragraphs(shared_data, 12),
                              epochs=2, max_seq_len=48)


def _lines(folder, epoch):
    with open(os.path.join(folder, f"epoch_{epoch}.json")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("reduce_memory", [False, True])
def test_items_are_the_file_tokens_as_teacher_ids(data_dir, bert_tokenizer, reduce_memory):
    ds = PregeneratedEpoch(os.path.join(data_dir, "epoch_0.json"), os.path.join(data_dir, "epoch_0_metrics.json"),
                           bert_tokenizer, reduce_memory=reduce_memory, with_lm_labels=True)
    lines = _lines(data_dir, 0)
    assert len(ds) == len(lines) == 12
    for i, line in enumerate(lines):
        item = ds[i]
        assert item["input_ids"].tolist() == bert_tokenizer.convert_tokens_to_ids(line["tokens"])
        assert item["token_type_ids"].tolist() == line["segment_ids"]
        assert item["attention_mask"].tolist() == [1] * len(line["tokens"])
        assert bool(item["is_random_next"]) == line["is_random_next"]
        labels = item["lm_label_ids"]
        assert labels[line["masked_lm_positions"]].tolist() == bert_tokenizer.convert_tokens_to_ids(line["masked_lm_labels"])
        assert int((labels != -1).sum()) == len(line["masked_lm_positions"])
        assert bert_tokenizer.decode(item["input_ids"][1:3]).strip()  # real wordpieces, not ids of another vocab


def test_reduce_memory_survives_pickling_for_workers(data_dir, bert_tokenizer):
    import pickle

    ds = PregeneratedEpoch(os.path.join(data_dir, "epoch_1.json"), os.path.join(data_dir, "epoch_1_metrics.json"),
                           bert_tokenizer, reduce_memory=True)
    clone = pickle.loads(pickle.dumps(ds))
    assert all(torch.equal(clone[i]["input_ids"], ds[i]["input_ids"]) for i in range(len(ds)))


def test_training_epochs_cycle_through_data_epochs_in_order(data_dir, bert_tokenizer):
    data = PregeneratedTrainingData(data_dir, bert_tokenizer, num_train_epochs=3, seed=7)
    assert data.num_data_epochs == 2 and len(data) == 36
    lines = [_lines(data_dir, e) for e in (0, 1)]
    as_ids = [{tuple(bert_tokenizer.convert_tokens_to_ids(x["tokens"])) for x in ls} for ls in lines]
    seen = [[tuple(data[e * 12 + i]["input_ids"].tolist()) for i in range(12)] for e in range(3)]
    assert set(seen[0]) == as_ids[0] and set(seen[1]) == as_ids[1] and set(seen[2]) == as_ids[0]
    assert seen[0] != seen[2]  # reshuffled for the third epoch (seed + epoch)
    again = PregeneratedTrainingData(data_dir, bert_tokenizer, num_train_epochs=3, seed=7)
    assert [tuple(again[i]["input_ids"].tolist()) for i in range(12)] == seen[0]  # deterministic


def test_collator_pads_with_the_pad_id(data_dir, bert_tokenizer):
    ds = PregeneratedTrainingData(data_dir, bert_tokenizer, shuffle=False)
    items = [ds[i] for i in range(4)]
    batch = PregeneratedCollator(bert_tokenizer.pad_token_id)(items)
    n = [len(it["input_ids"]) for it in items]
    assert batch["input_ids"].shape == (4, max(n))
    for i, it in enumerate(items):
        assert batch["attention_mask"][i].sum() == n[i]
        assert torch.equal(batch["input_ids"][i, : n[i]], it["input_ids"])
        assert (batch["input_ids"][i, n[i]:] == bert_tokenizer.pad_token_id).all()
    assert "token_type_ids" not in PregeneratedCollator(1, use_token_type_ids=False)(items)


def _copy_with(tmp_path, data_dir, edit_lines=None, metrics=None):
    folder = tmp_path / "bad"
    folder.mkdir()
    lines = open(os.path.join(data_dir, "epoch_0.json")).read().splitlines()
    if edit_lines:
        lines = edit_lines(lines)
    (folder / "epoch_0.json").write_text("\n".join(lines) + "\n")
    m = json.load(open(os.path.join(data_dir, "epoch_0_metrics.json")))
    m.update(metrics or {})
    (folder / "epoch_0_metrics.json").write_text(json.dumps(m))
    return str(folder)


@pytest.mark.parametrize("edit,metrics,message", [
    (lambda ls: ls[:2] + ["{not json"] + ls[3:], None, r"epoch_0.json:3: not valid JSON"),
    (lambda ls: ls[:-1], None, r"11 examples, but its metrics file says num_training_examples 12"),
    (lambda ls: [ls[0].replace('"[CLS]"', '"[NOT_A_TOKEN]"')] + ls[1:], None,
     r"epoch_0.json:1: token '\[NOT_A_TOKEN\]' is not in the teacher's vocabulary"),
    (lambda ls: [json.dumps({"tokens": ["[CLS]"]})] + ls[1:], None, r"epoch_0.json:1: missing key\(s\) segment_ids"),
    (None, {"max_seq_len": 8}, r"epoch_0.json:\d+: \d+ tokens, but max_seq_len is 8"),
])
def test_bad_files_are_clear_errors(tmp_path, data_dir, bert_tokenizer, edit, metrics, message):
    folder = _copy_with(tmp_path, data_dir, edit, metrics)
    with pytest.raises(UserError, match=message):
        PregeneratedTrainingData(folder, bert_tokenizer)[0]


def test_missing_epoch_zero_and_too_long_sequences(tmp_path, data_dir, bert_tokenizer):
    with pytest.raises(UserError, match="no epoch_0.json"):
        find_data_epochs(str(tmp_path))
    with pytest.raises(UserError, match="exceeds the teacher's 32 positions"):
        PregeneratedTrainingData(data_dir, bert_tokenizer, max_positions=32)


def test_reads_what_pregenerate_training_data_writes(tmp_path, packaged_teacher, bert_tokenizer, shared_data):
    """The contract with pregenerate_training_data.py: its real output (two epochs) reads back token for token."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tinybert.scripts import pregenerate_training_data

    corpus = tmp_path / "wiki_slice.txt"
    with open(os.path.join(shared_data, "corpus", "wiki.txt"), encoding="utf-8") as f:
        corpus.write_text(f.read(120_000).rsplit("\n", 1)[0] + "\n", encoding="utf-8")
    out = tmp_path / "pregen"
    pregenerate_training_data.main(["--train_corpus", str(corpus), "--bert_model", packaged_teacher, "--do_lower_case",
                                    "--output_dir", str(out), "--epochs_to_generate", "2", "--max_seq_len", "48",
                                    "--output_format", "json"])
    data = PregeneratedTrainingData(str(out), bert_tokenizer, num_train_epochs=2, reduce_memory=True, shuffle=False,
                                    max_positions=512)
    for epoch in (0, 1):
        lines = _lines(str(out), epoch)
        assert len(lines) > 10
        for i in (0, len(lines) - 1):
            item = data[data.offsets[epoch] + i]
            assert item["input_ids"].tolist() == bert_tokenizer.convert_tokens_to_ids(lines[i]["tokens"])
            assert item["token_type_ids"].tolist() == lines[i]["segment_ids"]
    assert len(data) == sum(len(_lines(str(out), e)) for e in (0, 1))
