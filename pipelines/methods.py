"""The table of distillation methods: each row is one `kdcore.distill.DistillMethod` (its options and how it builds
its objective from a teacher and a student), defined in its own file. `general_distill.py` and the first stage of
`task_distill.py` (intermediate layers) choose a row with `--distill_method`; the driver is `kdcore/distill.py`.
A new method = one file + one row here; it is then available to both.
"""
from minilm import embedding, v1 as minilm_v1, v2 as minilm_v2
from tinybert import intermediate as tinybert

METHODS = {m.name: m for m in (tinybert.METHOD, minilm_v1.METHOD, minilm_v2.METHOD, embedding.METHOD)}
