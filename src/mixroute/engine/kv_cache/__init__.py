"""Paged KV cache: block pool (+ prefix cache + KV events), manager, tensors."""
