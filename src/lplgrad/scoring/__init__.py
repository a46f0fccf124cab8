"""The numerics of query scores, as pure functions over tensors: uncertainty from logits, and exact
batched per-sample gradient norms (``gradnorm.py`` with the per-layer rules of ``layer_norms.py``)."""
