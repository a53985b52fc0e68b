"""Lightning callbacks of lit_rec."""

from callbacks.confidence import ConfidenceCallback
from callbacks.ctr_logger import CTRLogger
from callbacks.data_stats import DataStatsLogger
from callbacks.early_stopping import WarmupEarlyStopping
from callbacks.non_finite import NonFiniteGuard
from callbacks.prediction_writer import PredictionWriter
from callbacks.staleness import StalenessCallback

__all__ = [
    "CTRLogger",
    "ConfidenceCallback",
    "DataStatsLogger",
    "NonFiniteGuard",
    "PredictionWriter",
    "StalenessCallback",
    "WarmupEarlyStopping",
]
