"""Export a model folder to ONNX (fp32 and int8), gated on dev-set quality against PyTorch.

    python export_onnx.py --model_dir MODEL [--output_dir MODEL/onnx] [--task sst-2|sts-b] [--dev_file FILE]
                          [--max_drop 0.5] [--float_embeddings] [--overwrite_output_dir]

A sequence classifier (a run_glue.py / task_distill.py folder) exports its logits and is scored by SST-2 dev
accuracy x100; a sentence-embedding folder (a bare encoder, sentence-transformers folder or not) exports its pooled
(and, where the folder says so, normalised) sentence embedding, plus the token states, and is scored by STS-B dev
zero-shot Spearman x100. Each score is computed with PyTorch fp32, ONNX fp32 and ONNX int8 on the same batches.
The export fails (exit 2, one line, nothing written) when ONNX fp32 differs from PyTorch beyond float tolerance or
when int8 loses more than --max_drop points against PyTorch fp32.

Writes OUTPUT/model.onnx, OUTPUT/model_qint8.onnx, the tokenizer files, OUTPUT/export_results.json, and an
"ONNX export" section in the model card: the model folder's README.md when OUTPUT is inside the model folder (the
default, MODEL/onnx), else OUTPUT/README.md. An OUTPUT holding an export of other weights is refused unless
--overwrite_output_dir. Speed: bench/bench_export.py.
"""
import argparse

from kdcore.cli import ArgumentParser, parse_args, run_main
from pipelines.onnx_gate import DEV_FILES, export_and_gate


def build_parser():
    p = ArgumentParser(script="export_onnx.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, identifies=False,
                   help="a sequence-classifier folder or a sentence-embedding folder (HF encoder, sentence-transformers or not)")
    p.add_argument("--output_dir", default=None, identifies=False, help="where the ONNX files go (default: MODEL_DIR/onnx)")
    p.add_argument("--task", choices=sorted(DEV_FILES), default=None, identifies=False,
                   help="the quality gate's task (default: sst-2 for a classifier, sts-b for an embedding model)")
    p.add_argument("--dev_file", default=None, identifies=False,
                   help=f"the task's dev file (default: $KD_SHARED_DATA/{DEV_FILES['sst-2']} or .../{DEV_FILES['sts-b']})")
    p.add_argument("--max_drop", type=float, default=0.5, identifies=False, range="[0,100]",
                   help="the most points (x100 scale) int8 may lose against PyTorch fp32")
    p.add_argument("--fp32_tolerance", type=float, default=1e-4, identifies=False, range="(0,1)",
                   help="the largest |ONNX fp32 - PyTorch| allowed, relative to the outputs' largest magnitude (at least 1)")
    p.add_argument("--float_embeddings", action="store_true", identifies=False,
                   help="keep the embedding tables float in the int8 file (larger file; see the README for the effect)")
    p.add_argument("--max_examples", type=int, default=None, identifies=False, range=">=1",
                   help="score only the first N dev examples (tests)")
    p.add_argument("--max_seq_length", type=int, default=128, identifies=False, range=">=2")
    p.add_argument("--batch_size", type=int, default=32, identifies=False, range=">=1")
    p.add_argument("--overwrite_output_dir", action="store_true", identifies=False,
                   help="replace an export in --output_dir made from other weights")
    return p


def main(argv=None):
    return export_and_gate(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-export-onnx`)."""
    run_main(main)


if __name__ == "__main__":
    command()
