"""recommend_top_k and PredictionWriter: unseen items only, original ids, what predict_step returns, one file, DDP parts merged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import polars as pl
import pytest
import torch
from torch import Tensor

from callbacks.prediction_writer import PredictionWriter
from lit_rec.recommend import recommend_top_k

NUM_ITEMS = 5
# user 0 saw items 1 and 3; user 1 saw 2; user 2 saw items 1..4 (one unseen item left)
TENSORS = SimpleNamespace(
    num_items=NUM_ITEMS,
    seen_offsets=torch.tensor([0, 2, 3, 7]),
    seen_items=torch.tensor([1, 3, 2, 1, 2, 3, 4]),
    user_ids=["u0", "u1", "u2"],
    item_ids=["<PAD>", "a", "b", "c", "d", "e"],
)
# item i scores i for every user, PAD the highest of all (it must still never be recommended)
SCORES = torch.tensor([9.0, 1.0, 2.0, 3.0, 4.0, 5.0])


class FixedScores(L.LightningModule):
    """Scores every item by `SCORES`; predict_step returns each user's top `predict_top_k` unseen items, as RecModule's."""

    def __init__(self, predict_top_k: int = 2) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.predict_top_k = predict_top_k

    def score_all_items(self, batch: dict[str, Tensor]) -> Tensor:
        return SCORES.expand(batch["user"].shape[0], -1)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        items, scores = recommend_top_k(self, batch, self.predict_top_k, TENSORS)
        return {"user": batch["user"], "items": items, "scores": scores}


class NoPrediction(FixedScores):
    """A predict_step that returns nothing the writer can write."""

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        return None


class PredictData(L.LightningDataModule):
    """Three users in batches of two."""

    tensors = TENSORS

    def predict_dataloader(self) -> Iterator[dict[str, Tensor]]:
        return iter([{"user": torch.tensor([0, 1]), "history": torch.zeros(2, 3, dtype=torch.long)},
                     {"user": torch.tensor([2]), "history": torch.zeros(1, 3, dtype=torch.long)}])


def test_recommend_top_k_masks_seen_items_and_pad() -> None:
    batch = {"user": torch.tensor([0, 1, 2]), "history": torch.zeros(3, 2, dtype=torch.long)}
    items, scores = recommend_top_k(FixedScores(), batch, 3, TENSORS)
    assert items[0].tolist() == [5, 4, 2] and items[1].tolist() == [5, 4, 3]
    assert items[2, 0].item() == 5 and torch.isinf(scores[2, 1:]).all()  # only one unseen item left
    assert scores[0].tolist() == [5.0, 4.0, 2.0]
    # k beyond the catalogue is clipped to num_items columns
    assert recommend_top_k(FixedScores(), batch, 50, TENSORS)[0].shape == (3, NUM_ITEMS)


def test_writer_writes_one_row_per_user_and_rank(tmp_path: Path) -> None:
    out = tmp_path / "out" / "predictions.parquet"
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[PredictionWriter(str(out))])
    trainer.predict(FixedScores(), datamodule=PredictData(), return_predictions=False)
    frame = pl.read_parquet(out)
    assert frame.rows() == [("u0", 1, "e", 5.0), ("u0", 2, "d", 4.0), ("u1", 1, "e", 5.0), ("u1", 2, "d", 4.0), ("u2", 1, "e", 5.0)]
    assert [p.name for p in out.parent.iterdir()] == ["predictions.parquet"]


def test_writer_writes_what_predict_step_returns_and_sets_nothing_on_the_module(tmp_path: Path) -> None:
    writer = PredictionWriter(str(tmp_path / "p.parquet"))
    module = FixedScores(predict_top_k=5)
    writer.on_predict_start(SimpleNamespace(), module)
    assert module.predict_top_k == 5
    prediction = {"user": torch.tensor([1]), "items": torch.tensor([[3, 2]]), "scores": torch.tensor([[0.5, 0.25]])}
    trainer = SimpleNamespace(world_size=1, datamodule=SimpleNamespace(tensors=TENSORS))
    writer.write_on_batch_end(trainer, module, prediction, None, {"user": torch.tensor([1])}, 0)
    writer.on_predict_epoch_end(trainer, module)
    assert pl.read_parquet(tmp_path / "p.parquet").rows() == [("u1", 1, "c", 0.5), ("u1", 2, "b", 0.25)]  # every returned slot


def test_ddp_parts_are_merged_by_rank_zero(tmp_path: Path) -> None:
    out = tmp_path / "predictions.parquet"
    strategy = SimpleNamespace(barrier=lambda name=None: None)
    module = FixedScores(predict_top_k=1)
    # rank 1 finishes first (a real barrier would hold rank 0 until it has)
    for rank, users in ((1, [2]), (0, [0, 1])):
        writer = PredictionWriter(str(out))
        trainer = SimpleNamespace(world_size=2, global_rank=rank, is_global_zero=rank == 0, strategy=strategy,
                                  datamodule=SimpleNamespace(tensors=TENSORS))
        writer.on_predict_start(trainer, module)
        batch = {"user": torch.tensor(users), "history": torch.zeros(len(users), 3, dtype=torch.long)}
        writer.write_on_batch_end(trainer, module, module.predict_step(batch, 0), None, batch, 0)
        writer.on_predict_epoch_end(trainer, module)
    assert pl.read_parquet(out)["user"].sort().to_list() == ["u0", "u1", "u2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.parquet"]


def test_writer_names_a_predict_step_that_returns_no_recommendations(tmp_path: Path) -> None:
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[PredictionWriter(str(tmp_path / "p.parquet"))])
    with pytest.raises(TypeError, match="NoPrediction.predict_step returned NoneType"):
        trainer.predict(NoPrediction(), datamodule=PredictData(), return_predictions=False)
