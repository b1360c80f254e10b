"""Text classification: BERT-family teachers, DistilBERT/TinyBERT-style students, head and FFN
pruning, INT8 on ONNX Runtime. Needs the ``text`` extra (transformers, tokenizers) and ``onnx``.

Nothing heavy is imported here: ``import edgecompress.text`` works without those extras.
"""
