"""kdcore/finetune.py: the one batched prediction loop and the task objective, on a tiny random classifier."""
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from kdcore.finetune import TaskObjective, pad_collate, predict_batches


def _model_and_items():
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=3))
    g = torch.Generator().manual_seed(1)
    items = [{"input_ids": torch.randint(1, 50, (n,), generator=g).tolist(), "labels": n % 3} for n in range(3, 14)]
    return model, items


def test_prediction_loop_equals_one_example_at_a_time_and_restores_train_mode():
    model, items = _model_and_items()
    model.train()  # dropout on: the loop must switch it off
    collate = lambda batch: pad_collate(batch, 0)  # noqa: E731
    out = predict_batches(model, items, collate, 4, "cpu", lambda m, b: m(input_ids=b["input_ids"],
                                                                          attention_mask=b["attention_mask"]).logits)
    assert model.training and [len(o) for o in out] == [4, 4, 3]
    model.eval()
    with torch.no_grad():
        one_by_one = [model(input_ids=torch.tensor([it["input_ids"]])).logits[0] for it in items]
    torch.testing.assert_close(torch.cat(out), torch.stack(one_by_one), rtol=1e-5, atol=1e-5)


def test_task_objective_uses_the_given_loss_or_the_models_own():
    model, items = _model_and_items()
    model.eval()
    batch = pad_collate(items[:5], 0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    own = TaskObjective(model)(**dict(batch))["loss"]
    given = TaskObjective(model, lambda lg, y: F.cross_entropy(lg.float(), y, reduction="sum"))(**dict(batch))["loss"]
    torch.testing.assert_close(own, F.cross_entropy(logits, batch["labels"]))
    torch.testing.assert_close(given, F.cross_entropy(logits, batch["labels"], reduction="sum"))
