"""Tiny text fixtures for the tests: a learnable synthetic sentiment CSV and a tiny
random BERT saved as a Hugging Face directory (the shape of a user's fine-tuned model)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

POSITIVE = ["great", "wonderful", "moving", "brilliant", "funny", "charming", "superb"]
NEGATIVE = ["dull", "boring", "awful", "clumsy", "tedious", "bland", "messy"]
FILLER = ["the", "film", "story", "cast", "plot", "a", "is", "and", "this", "movie", "was",
          "with", "its", "ending", "script", "very", "quite", "really"]


def write_sentiment_csv(path: Path, rows: int = 240, seed: int = 0) -> Path:
    """``text,label`` rows (labels ``pos``/``neg``); one sentiment word decides the label."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(rows):
            label = "pos" if i % 2 else "neg"
            words = rng.choices(FILLER, k=rng.randint(4, 12))
            words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "pos"
                                                                else NEGATIVE))
            writer.writerow([" ".join(words), label])
    return path


def tiny_bert_dir(path: Path, *, layers: int = 2, hidden: int = 32, heads: int = 4,
                  ffn: int = 64, num_labels: int = 2, seed: int = 0) -> Path:
    """A random-weight ``BertForSequenceClassification`` + WordPiece tokenizer, saved with
    ``save_pretrained`` into ``path``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from edgecompress.text.models import train_wordpiece

    texts = [" ".join(POSITIVE + NEGATIVE + FILLER)] * 4
    tokenizer = train_wordpiece(texts, vocab_size=200, max_length=64)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=ffn,
                        max_position_embeddings=64, num_labels=num_labels,
                        pad_token_id=tokenizer.pad_token_id)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
