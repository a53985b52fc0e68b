"""Lightning callbacks of lit_rec."""

from callbacks.confidence import ConfidenceLogger
from callbacks.ctr_logger import CTRLogger
from callbacks.data_stats import DataStatsLogger
from callbacks.early_stopping import WarmupEarlyStopping
from callbacks.model_stats import ModelStatsLogger
from callbacks.non_finite import NonFiniteGuard
from callbacks.prediction_writer import PredictionWriter
from callbacks.staleness import StalenessCallback

__all__ = [
    "CTRLogger",
    "ConfidenceLogger",
    "DataStatsLogger",
    "ModelStatsLogger",
    "NonFiniteGuard",
    "PredictionWriter",
    "StalenessCallback",
    "WarmupEarlyStopping",
]
