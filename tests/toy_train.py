"""A minimal script on the shared runtime, used by the runtime tests (resume after SIGKILL, DDP equivalence).

A tiny BERT with a regression head learns a fixed random target from random token ids; dropout is on (unless
--dropout 0) so that exact resume also covers the RNG states.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from torch import nn
from transformers import BertConfig, BertModel

from kdcore.cli import parse_args, run_main
from kdcore.runtime import Runtime, add_runtime_args
from kdcore.trainer import train


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n, seq_len=12, vocab=50):
        g = torch.Generator().manual_seed(1234)
        self.ids = torch.randint(1, vocab, (n, seq_len), generator=g)
        self.lengths = torch.randint(3, seq_len + 1, (n,), generator=g)
        self.targets = torch.randn(n, generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.ids[i], self.lengths[i], self.targets[i]


def collate(items):
    ids = torch.stack([x[0] for x in items])
    lengths = torch.stack([x[1] for x in items])
    mask = (torch.arange(ids.size(1))[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "targets": torch.stack([x[2] for x in items])}


class Regression(nn.Module):
    def __init__(self, dropout):
        super().__init__()
        torch.manual_seed(0)
        config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=32,
                            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(32, 1)
        self.sleep = 0.0

    def forward(self, input_ids, attention_mask, targets):
        if self.sleep:
            time.sleep(self.sleep)
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        pred = self.head(h).squeeze(-1)
        mse = (pred - targets).pow(2).mean()
        return {"loss": mse, "mse": mse, "abs_pred": pred.abs().mean()}


def save(model, folder):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, "toy.safetensors"))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--train_batch_size", type=int, default=4)
    parser.add_argument("--num_train_epochs", type=float, default=2)
    parser.add_argument("--num_examples", type=int, default=40)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--sleep_per_batch", type=float, default=0.0)
    add_runtime_args(parser, defaults={"learning_rate": 1e-3, "logging_steps": 1})
    args = parse_args(parser, argv)
    rt = Runtime(args)
    model = Regression(args.dropout)
    model.sleep = args.sleep_per_batch
    train(rt, args, model, ToyData(args.num_examples), collate, args.train_batch_size, args.num_train_epochs, save)
    if rt.distributed:  # every rank writes its own weights so the test can compare ranks
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  os.path.join(args.output_dir, f"rank{rt.rank}.safetensors"))


if __name__ == "__main__":
    run_main(main)
