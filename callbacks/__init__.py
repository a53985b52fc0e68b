"""Lightning callbacks of lit_rec."""

from callbacks.ctr_logger import CTRLogger
from callbacks.data_stats import DataStatsLogger
from callbacks.non_finite import NonFiniteGuard

__all__ = ["CTRLogger", "DataStatsLogger", "NonFiniteGuard"]
