"""Distil a static token embedding (one vector per vocabulary token, sentence = mean of its tokens) from a
sentence-embedding teacher, with no training text: token vectors from the teacher, PCA, Zipf weighting.

    python distill_static.py --teacher_model T --output_dir static [--pca_dims 256] [--weighting sif]

The folder (static_embeddings.safetensors + tokenizer.json + config.json) is scored by eval_embeddings.py and
eval_sts.py like any encoder folder. The recipe, step by step: minilm/static_embedding.py.
"""
import argparse

from kdcore.cli import ArgumentParser, parse_args, run_main
from minilm.static_embedding import TOKEN_CONTEXTS, WEIGHTINGS, distill_static


def build_parser():
    p = ArgumentParser(script="distill_static.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher_model", required=True, identifies=False,
                   help="a HF encoder folder (a sentence-transformers folder gives its pooling)")
    p.add_argument("--output_dir", required=True, identifies=False, help="the static embedding folder to write")
    p.add_argument("--pca_dims", type=int, default=256, identifies=False, range=">=1 or 0",
                   help="PCA components kept (model2vec's default 256); 0: the teacher's width, no PCA")
    p.add_argument("--weighting", choices=WEIGHTINGS, default="sif", identifies=False,
                   help="Zipf weighting by vocabulary rank: sif a/(a+p_r) (default), log log(1+r), none")
    p.add_argument("--sif_coefficient", type=float, default=1e-4, identifies=False, range="(0,1)",
                   help="a of the sif weighting")
    p.add_argument("--token_context", choices=TOKEN_CONTEXTS, default="sep_cls", identifies=False,
                   help="what surrounds each token in the teacher: [SEP] t [CLS] (default), [CLS] t [SEP], t alone")
    p.add_argument("--batch_size", type=int, default=1024, identifies=False, range=">=1")
    return p


def main(argv=None):
    return distill_static(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-distill-static`)."""
    run_main(main)


if __name__ == "__main__":
    command()
