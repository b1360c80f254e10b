"""Models: the built-in CNN family, loading user models, head replacement and size statistics."""

from edgecompress.models.heads import backbone_groups, find_head, replace_head
from edgecompress.models.loading import (
    KINDS,
    check_model_io,
    load_model,
    load_weights,
    read_state_dict,
    resolve_factory,
    set_mode,
)
from edgecompress.models.stats import count_macs, count_params, model_size_bytes
from edgecompress.models.tiny import FAMILIES, build_builtin, scaled_channels

__all__ = [
    "FAMILIES",
    "KINDS",
    "backbone_groups",
    "build_builtin",
    "check_model_io",
    "count_macs",
    "count_params",
    "find_head",
    "load_model",
    "load_weights",
    "model_size_bytes",
    "read_state_dict",
    "replace_head",
    "resolve_factory",
    "scaled_channels",
    "set_mode",
]
