"""pregenerate_training_data.py on a real Wikipedia slice with the packaged teacher's vocabulary."""
import json
import os

import pytest

from tinybert.scripts import pregenerate_training_data as script
from kdcore.cli import UserError
from tinybert.corpus import detect_corpus_format, iter_documents, split_sentences


def _read_epoch(folder, epoch=0):
    with open(os.path.join(folder, f"epoch_{epoch}.json"), encoding="utf-8") as f:
        instances = [json.loads(line) for line in f]
    with open(os.path.join(folder, f"epoch_{epoch}_metrics.json")) as f:
        metrics = json.load(f)
    return instances, metrics


@pytest.fixture(scope="module")
def wiki(shared_data):
    return os.path.join(shared_data, "corpus", "wiki.txt")


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory, wiki, packaged_teacher):
    out = str(tmp_path_factory.mktemp("pregen_masked"))
    script.main(["--train_corpus", wiki, "--bert_model", packaged_teacher, "--do_lower_case", "--output_dir", out,
                 "--epochs_to_generate", "2", "--max_documents", "8", "--masked_lm_prob", "0.15",
                 "--do_whole_word_mask", "--max_seq_len", "64", "--output_format", "json"])
    return out


def test_sentence_splitter():
    text = "Dr. Smith met J. R. R. Tolkien in 1950. They talked, e.g. about elves! Did it rain? \"Yes.\" It did."
    assert split_sentences(text) == [
        "Dr. Smith met J. R. R. Tolkien in 1950.", "They talked, e.g. about elves!", "Did it rain?", '"Yes."', "It did.",
    ]


def test_format_detection(tmp_path, wiki, shared_data):
    assert detect_corpus_format(wiki) == "raw"
    assert detect_corpus_format(os.path.join(shared_data, "corpus", "austen.txt")) == "raw"  # hard-wrapped
    p = tmp_path / "sents.txt"
    p.write_text("The cat sat.\nIt was warm.\n\nA new document starts.\nIt ends here.\n")
    assert detect_corpus_format(str(p)) == "sentences"
    assert list(iter_documents(str(p), "sentences")) == [["The cat sat.", "It was warm."],
                                                         ["A new document starts.", "It ends here."]]


def test_epoch_files_follow_the_original_format(masked_run, packaged_teacher):
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(packaged_teacher).get_vocab()
    for epoch in (0, 1):
        instances, metrics = _read_epoch(masked_run, epoch)
        assert metrics == {"num_training_examples": len(instances), "max_seq_len": 64}
        assert len(instances) > 50
        for inst in instances:
            assert set(inst) == {"tokens", "segment_ids", "is_random_next", "masked_lm_positions", "masked_lm_labels"}
            tokens, seg = inst["tokens"], inst["segment_ids"]
            assert len(tokens) == len(seg) <= 64
            assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 2
            first_sep = tokens.index("[SEP]")
            assert seg == [0] * (first_sep + 1) + [1] * (len(tokens) - first_sep - 1)
            pos, labels = inst["masked_lm_positions"], inst["masked_lm_labels"]
            assert len(pos) == len(labels) and 1 <= len(pos) <= 20 and pos == sorted(pos)
            assert all(tokens[p] not in ("[CLS]", "[SEP]") for p in pos)
            assert all(lab in vocab for lab in labels) and all(t in vocab for t in tokens)
            # whole-word masking: a masked "##" piece has its preceding piece masked too (unless a segment starts
            # with it after truncation)
            masked = set(pos)
            original = list(tokens)
            for p, lab in zip(pos, labels):
                original[p] = lab
            for p in pos:
                if original[p].startswith("##"):
                    assert p - 1 in masked or tokens[p - 1] in ("[CLS]", "[SEP]")
        assert sum(i["is_random_next"] for i in instances) > 0
        assert sum(not i["is_random_next"] for i in instances) > 0
    # the two epochs are different draws over the same corpus
    assert _read_epoch(masked_run, 0)[0] != _read_epoch(masked_run, 1)[0]
    assert not [n for n in os.listdir(masked_run) if n.startswith(".")]  # no temporary files left


def test_workers_and_reduce_memory_give_identical_output(tmp_path, wiki, packaged_teacher):
    common = ["--train_corpus", wiki, "--bert_model", packaged_teacher, "--do_lower_case", "--epochs_to_generate", "1",
              "--max_documents", "6", "--masked_lm_prob", "0.15", "--max_seq_len", "64", "--output_format", "json"]
    outputs = []
    for extra in ([], ["--num_workers", "2"], ["--num_workers", "2", "--reduce_memory"]):
        out = str(tmp_path / f"run{len(outputs)}")
        script.main(common + ["--output_dir", out] + extra)
        with open(os.path.join(out, "epoch_0.json"), "rb") as f:
            outputs.append(f.read())
        assert sorted(os.listdir(out)) == ["epoch_0.json", "epoch_0_metrics.json"]  # the disk store is removed
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(outputs[0]) > 1000


def test_masked_lm_prob_zero_means_no_masks(tmp_path, packaged_teacher):
    corpus = tmp_path / "c.txt"
    corpus.write_text("The cat sat on the mat.\nIt purred.\n\nDogs bark loudly.\nThey run.\n\nBirds sing.\n")
    out = str(tmp_path / "o")
    script.main(["--train_corpus", str(corpus), "--bert_model", packaged_teacher,
                 "--output_dir", out, "--epochs_to_generate", "1", "--output_format", "json"])
    instances, metrics = _read_epoch(out)
    assert metrics["num_training_examples"] == len(instances) >= 3
    assert all(i["masked_lm_positions"] == [] and "[MASK]" not in i["tokens"] for i in instances)
    words = " ".join(t for i in instances for t in i["tokens"])
    assert "cat sat on the mat" in words


def test_single_document_needs_one_seq(tmp_path, packaged_teacher):
    corpus = tmp_path / "c.txt"
    corpus.write_text("One sentence here.\nAnother one there.\n")
    args = ["--train_corpus", str(corpus), "--bert_model", packaged_teacher, "--output_dir", str(tmp_path / "o"),
            "--epochs_to_generate", "1", "--output_format", "json"]
    with pytest.raises(UserError, match="no document breaks found"):
        script.main(args)
    assert not os.path.exists(tmp_path / "o" / "epoch_0.json")
    script.main(args + ["--one_seq"])
    instances, _ = _read_epoch(str(tmp_path / "o"))
    assert instances and not any(i["is_random_next"] for i in instances)


def test_run_owns_its_output_folder(tmp_path, packaged_teacher):
    """Epoch files of an older, longer run and temporary files of a killed run are removed; others stay."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("The cat sat on the mat.\nIt purred.\n\nDogs bark loudly.\nThey run.\n\nBirds sing.\n")
    out = tmp_path / "o"
    out.mkdir()
    for name in ("epoch_1.json", "epoch_1_metrics.json", "epoch_7.json", ".epoch_0.json.tmp-abc",
                 ".documents.x.bin", "notes.txt"):
        (out / name).write_text("{}\n")
    (out / "epoch_2").mkdir()  # binary shards of an older, longer run
    (out / "epoch_2" / "shard_000000000.input_ids.npy").write_bytes(b"\0")
    script.main(["--train_corpus", str(corpus), "--bert_model", packaged_teacher, "--output_dir", str(out),
                 "--epochs_to_generate", "1", "--output_format", "json"])
    assert sorted(os.listdir(out)) == ["epoch_0.json", "epoch_0_metrics.json", "notes.txt"]
    (out / "epoch_3").mkdir()
    script.main(["--train_corpus", str(corpus), "--bert_model", packaged_teacher, "--output_dir", str(out),
                 "--epochs_to_generate", "1"])  # binary shards (the default) replace the json epoch
    assert sorted(os.listdir(out)) == ["epoch_0", "epoch_0_metrics.json", "notes.txt"]


def test_corpus_bytes_are_never_replaced(tmp_path, packaged_teacher):
    """A corpus that is not UTF-8 is an error naming file:line (it used to lose the byte: "café" -> "caf")."""
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("A line.\n\nUn caf\u00e9 noir.\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.txt:3: not UTF-8 text \(byte 0xe9 at column 7\)"):
        script.main(["--train_corpus", str(corpus), "--bert_model", packaged_teacher,
                     "--output_dir", str(tmp_path / "o"), "--one_seq"])
