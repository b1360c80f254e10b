"""Data loading, splitting, normalisation and calibration subsets."""

from edgecompress.data.calibration import load_calibration, sample_calibration, save_calibration
from edgecompress.data.datasets import SOURCES, DatasetBundle, load_dataset
from edgecompress.data.split import (
    Split,
    compute_normalization,
    normalize,
    stratified_partition,
    stratified_split,
    stratified_subsample,
)

__all__ = [
    "SOURCES",
    "DatasetBundle",
    "Split",
    "compute_normalization",
    "load_calibration",
    "load_dataset",
    "normalize",
    "sample_calibration",
    "save_calibration",
    "stratified_partition",
    "stratified_split",
    "stratified_subsample",
]
