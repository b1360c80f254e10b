"""Hugging Face models for the text path: the teacher (a local directory or a BERT built from a
config), the student (a subset of the teacher's layers and/or narrower), and their sizes.

Everything loads with ``local_files_only=True``: nothing is fetched from a hub, and a directory's
own Python code runs only with ``trust_remote_code: true``. Models use the eager attention
implementation: it returns attention maps (TinyBERT loss) and exports to plain ONNX ops.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress.errors import BackendUnavailable, ModelError

logger = logging.getLogger(__name__)

ATTN = "eager"


def transformers_module():
    """Import transformers lazily; its absence is exit 3 with the install line."""
    try:
        import transformers
    except ImportError as exc:
        raise BackendUnavailable("the text pipeline needs transformers and tokenizers: "
                                 "pip install 'edgecompress[text]'") from exc
    return transformers


def load_hf(path: Path, *, num_labels: int | None = None, trust_remote_code: bool = False,
            id2label: dict[int, str] | None = None) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` from a local HF directory (sequence classification).

    A directory holding a bare encoder (e.g. ``BertModel``) gets a fresh classification head
    with ``num_labels`` outputs; one whose head has another size is refused.

    Raises:
        ModelError: not a directory, no config.json, unloadable, or a head of the wrong size.
    """
    tf = transformers_module()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"teacher.path: {path} is not a Hugging Face model directory "
                         "(no config.json)")
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    try:
        config = tf.AutoConfig.from_pretrained(path, **kwargs)
        head_known = any(a.endswith("ForSequenceClassification")
                         for a in (config.architectures or []))
        if num_labels is not None and head_known and config.num_labels != num_labels:
            raise ModelError(f"{path}: classification head has {config.num_labels} labels, the "
                             f"data has {num_labels}")
        if num_labels is not None:
            config.num_labels = num_labels
        if id2label:
            config.id2label, config.label2id = id2label, {v: k for k, v in id2label.items()}
        model = tf.AutoModelForSequenceClassification.from_pretrained(
            path, config=config, attn_implementation=ATTN, **kwargs)
        tokenizer = tf.AutoTokenizer.from_pretrained(path, **kwargs)
    except ModelError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load the Hugging Face directory {path}: {first}") from None
    return model.eval(), tokenizer


def save_hf(model: nn.Module, tokenizer: Any, out_dir: Path) -> Path:
    """``save_pretrained`` for model and tokenizer into ``out_dir`` (safetensors)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def train_wordpiece(texts: Iterable[str] | Iterable[list[str]], vocab_size: int,
                    max_length: int) -> Any:
    """A lower-cased BERT WordPiece tokenizer trained on ``texts`` (strings, or lists of
    strings read a chunk at a time; offline, seconds)."""
    transformers_module()
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=max_length)


def scratch_teacher(cfg: Any, texts: Iterable[str] | Iterable[list[str]] | None,
                    classes: list[str], max_length: int, seed: int,
                    tokenizer: Any = None) -> tuple[nn.Module, Any]:
    """A BERT from a config with random weights, and a tokenizer trained on ``texts`` (or the
    given ``tokenizer``: under torchrun rank 0 trains it and sends it to the others, so every
    rank builds the same vocabulary)."""
    tf = transformers_module()
    if tokenizer is None:
        tokenizer = train_wordpiece(texts, cfg.vocab_size, max_length)
    torch.manual_seed(seed)
    config = tf.BertConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=max(max_length, 128), num_labels=len(classes),
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=tokenizer.pad_token_id, id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)})
    config._attn_implementation = ATTN
    return tf.BertForSequenceClassification(config).eval(), tokenizer


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's layer list of a BERT-family model (BERT, RoBERTa, ...: ``encoder.layer``)."""
    base = getattr(model, model.base_model_prefix, None)
    encoder = getattr(base, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelError(f"{type(model).__name__}: no encoder.layer list; the text pipeline "
                         "supports BERT-family encoders (BERT, RoBERTa, MiniLM, ...)")
    return layers


def num_layers(model: nn.Module) -> int:
    """Encoder depth."""
    return len(encoder_layers(model))


def kept_layers(student_cfg: Any, teacher_layers: int) -> list[int]:
    """Teacher layer indices the student keeps (evenly spaced for ``num_layers``).

    Raises:
        ModelError: an index beyond the teacher's depth, or a deeper student than teacher.
    """
    if student_cfg.keep_layers is not None:
        bad = [i for i in student_cfg.keep_layers if i >= teacher_layers]
        if bad:
            raise ModelError(f"student.keep_layers: {bad} out of range; the teacher has "
                             f"{teacher_layers} layers (0..{teacher_layers - 1})")
        return list(student_cfg.keep_layers)
    n = student_cfg.num_layers or max(1, teacher_layers // 2)
    if n > teacher_layers:
        raise ModelError(f"student.num_layers: {n} > the teacher's {teacher_layers} layers")
    # Evenly spaced, always ending with the last layer (its features feed the classifier).
    return sorted({round((i + 1) * teacher_layers / n) - 1 for i in range(n)})


def build_student(teacher: nn.Module, student_cfg: Any, seed: int) -> tuple[nn.Module, list[int]]:
    """The student and the teacher layers it maps to.

    Same width: a deep copy of the teacher keeping only ``kept_layers`` (DistilBERT style:
    embeddings, kept layers, pooler and classifier start from the teacher's weights). Narrower
    (hidden/heads/FFN differ): the same architecture from a modified config, random weights.
    """
    layers = kept_layers(student_cfg, num_layers(teacher))
    cfg = copy.deepcopy(teacher.config)
    narrow = {k: v for k, v in (("hidden_size", student_cfg.hidden_size),
                                ("num_attention_heads", student_cfg.num_attention_heads),
                                ("intermediate_size", student_cfg.intermediate_size))
              if v is not None and v != getattr(cfg, k)}
    if not narrow:
        student = copy.deepcopy(teacher)
        src = encoder_layers(teacher)
        base = getattr(student, student.base_model_prefix)
        base.encoder.layer = nn.ModuleList([copy.deepcopy(src[i]) for i in layers])
        student.config.num_hidden_layers = len(layers)
        return student.eval(), layers
    for key, value in narrow.items():
        setattr(cfg, key, value)
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ModelError(f"student: hidden_size {cfg.hidden_size} is not a multiple of "
                         f"num_attention_heads {cfg.num_attention_heads}")
    cfg.num_hidden_layers = len(layers)
    torch.manual_seed(seed)
    student = type(teacher)(cfg)
    if cfg.hidden_size == teacher.config.hidden_size:  # embeddings still fit: start from them
        base_s = getattr(student, student.base_model_prefix)
        base_t = getattr(teacher, teacher.base_model_prefix)
        base_s.embeddings.load_state_dict(base_t.embeddings.state_dict())
    return student.eval(), layers


def encoder_params(model: nn.Module) -> int:
    """Parameters of the transformer layers (embeddings and head excluded): what distillation
    and pruning shrink, and what the issue's 50% budget counts."""
    return sum(p.numel() for p in encoder_layers(model).parameters())


def total_params(model: nn.Module) -> int:
    """All parameters."""
    return sum(p.numel() for p in model.parameters())


def encoder_macs(model: nn.Module, seq_len: int) -> int:
    """Multiply-accumulates of the encoder for one sequence of ``seq_len`` tokens: every
    Linear in the layers plus the two attention matmuls (QK^T and AV)."""
    macs = 0
    for layer in encoder_layers(model):
        for mod in layer.modules():
            if isinstance(mod, nn.Linear):
                macs += mod.in_features * mod.out_features * seq_len
        attn = layer.attention.self
        macs += 2 * seq_len * seq_len * attn.all_head_size
    return int(macs)


def model_summary(model: nn.Module, seq_len: int = 128) -> dict[str, int]:
    """Sizes that go into the report."""
    attn = [layer.attention.self.num_attention_heads for layer in encoder_layers(model)]
    return {"params": total_params(model), "encoder_params": encoder_params(model),
            "macs": encoder_macs(model, seq_len), "layers": len(attn), "heads": attn,
            "hidden_size": int(model.config.hidden_size),
            "intermediate_size": int(model.config.intermediate_size)}
