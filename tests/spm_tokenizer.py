"""A small real SentencePiece model, trained here from real text, loaded as an XLM-R tokenizer.

No XLM-R tokenizer can be downloaded in CI, so the XLM-R path (fairseq id offset, `▁` word prefixes, character
offsets) is exercised with a 1,000-piece unigram model trained on German XNLI training sentences and English
Wikipedia paragraphs from the shared data.
"""
import itertools
import os


def build_spm_tokenizer_dir(shared_data: str, base_dir: str) -> str:
    """Train (once per base_dir) and save the tokenizer folder; returns the folder path."""
    folder = os.path.join(base_dir, "spm_xlmr_tokenizer")
    if os.path.isfile(os.path.join(folder, "sentencepiece.bpe.model")):
        return folder
    import sentencepiece as spm

    os.makedirs(folder, exist_ok=True)
    lines = []
    with open(os.path.join(shared_data, "xnli", "XNLI-MT-1.0", "multinli", "multinli.train.de.tsv"), encoding="utf-8") as f:
        for line in itertools.islice(f, 1, 2001):
            lines.extend(line.rstrip("\n").split("\t")[:2])
    with open(os.path.join(shared_data, "corpus", "wiki.txt"), encoding="utf-8") as f:
        lines.extend(line.strip() for line in itertools.islice(f, 3000) if line.strip())
    text = os.path.join(base_dir, "spm_train.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    spm.SentencePieceTrainer.train(input=text, model_prefix=os.path.join(base_dir, "spm"), vocab_size=1000,
                                   model_type="unigram", minloglevel=2, num_threads=1)
    os.replace(os.path.join(base_dir, "spm.model"), os.path.join(folder, "sentencepiece.bpe.model"))
    from transformers import XLMRobertaTokenizer

    # Converted with XLM-R's fairseq id offset; saving adds tokenizer.json / tokenizer_config.json, so the
    # folder loads with AutoTokenizer like a downloaded xlm-roberta-base tokenizer folder.
    XLMRobertaTokenizer.from_pretrained(folder).save_pretrained(folder)
    return folder
