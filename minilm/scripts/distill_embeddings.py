"""Embedding distillation of a sentence-embedding teacher into a smaller student, then STS zero-shot evaluation.

    python distill_embeddings.py --teacher_model $T --student_model configs/minilm_L3xH384.json \
        --student_init teacher_layers --init_layers 2,4,6 --train_text ../shared/data/corpus/brown.txt \
        --output_dir emb_student [--relation_weight 1.0] [--sts_file ../shared/data/glue/STS-B/dev.tsv]

Loss: MSE between the teacher's and the student's pooled (teacher's pooling and normalisation) sentence embeddings,
plus `--relation_weight` x MiniLMv2's Q-Q/K-K/V-V relation KL on the last layers (minilm/embedding.py). Training
text: one sentence (or short passage) a line. The output is a HF folder and, when the teacher is a
sentence-transformers folder, a sentence-transformers folder (`SentenceTransformer(output_dir)` loads it);
`eval_results.json` holds the STS Spearman before and after training.
"""
from kdcore.cli import parse_args, run_main
from minilm import embedding


def build_parser():
    return embedding.build_parser(script="distill_embeddings.py")


def main(argv=None):
    return embedding.run_embedding_distill(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-distill-embeddings`)."""
    run_main(main)


if __name__ == "__main__":
    command()
