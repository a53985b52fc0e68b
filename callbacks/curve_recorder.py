"""`lit_rec.reproduce.curves.CurveRecorder` under its old class_path, so that run configs written by earlier
reproductions (`DIR/configs/*.yaml`) still rerun with `train.py fit --config`."""

from lit_rec.reproduce.curves import CurveRecorder

__all__ = ["CurveRecorder"]
