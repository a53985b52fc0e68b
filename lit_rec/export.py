"""Exports a neural agent's scoring network from a checkpoint to a self-contained TorchScript file.

`python -m lit_rec.export --ckpt CKPT --out OUT [--config CONFIG]`. The artefact's
`forward(history (B, L) int64, candidates (B, C) int64) -> scores (B, C)` needs only torch:
`torch.jit.load(OUT)(history, candidates)`.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import instantiate_module
from torch import Tensor, nn

__all__ = ["ExportError", "ScoringArtefact", "export", "load_module", "main", "scoring_network"]


# state that RecModule.setup() derives from the data (the popularity reference), absent from a fresh module
_BUILT_IN_SETUP = ("popularity.",)


class ExportError(Exception):
    """A checkpoint or module that cannot be exported; the message is one line."""


class ScoringArtefact(nn.Module):
    """The exported interface: scores of candidate items given histories."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, history: Tensor, candidates: Tensor) -> Tensor:
        """Scores `(B, C)` of `candidates (B, C)` after left-padded `history (B, L)` (PAD = 0)."""
        return self.network.score(history, candidates)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ExportError(f"{path}: checkpoint not found")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            if "weights_only" not in str(error):
                raise
            # a checkpoint holding Python objects beyond tensors and containers: trusted like train.py's own
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        lines = str(error).strip().splitlines()
        raise ExportError(f"{path}: not a readable checkpoint ({lines[0] if lines else type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ExportError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def _load_weights(module: nn.Module, state_dict: dict[str, Tensor], path: Path) -> None:
    """Loads the weights; keys the fresh module lacks are fine only for state built from the data in setup()."""
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    unexpected = [key for key in unexpected if not key.startswith(_BUILT_IN_SETUP)]
    if missing or unexpected:
        raise ExportError(f"{path}: weights do not fit {type(module).__name__} (missing {missing[:3]}, unexpected {unexpected[:3]})")


def _module_from_config(config: Path) -> nn.Module:
    """Builds the model the way `train.py` does (the data gives num_items and num_users)."""
    import yaml

    from lit_rec.cli import make_cli

    if not config.is_file():
        raise ExportError(f"{config}: config not found")
    loaded = yaml.safe_load(config.read_text()) or {}
    if "model" not in loaded:
        raise ExportError(f"{config}: no `model` section")
    # only the parts that build the model: a saved fit config also holds subcommand keys (ckpt_path, ...)
    parts = {key: loaded[key] for key in ("model", "data") if key in loaded}
    cli = make_cli(["--config", json.dumps(parts), "--trainer.logger=false"], run=False)
    return cli.model


def load_module(ckpt: str | Path, config: str | Path | None = None) -> nn.Module:
    """The LightningModule saved in `ckpt` (class from its hyper-parameters, else from `config`), in eval mode."""
    from lit_rec.modules.base import RecModule

    path = Path(ckpt)
    checkpoint = _read_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    class_path = hparams.pop("_class_path", None)
    hparams.pop("_instantiator", None)
    if class_path is not None:
        module_name, _, class_name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as error:
            raise ExportError(f"{path}: cannot import the checkpoint's model class {class_path} ({error})") from None
        if not (isinstance(cls, type) and issubclass(cls, RecModule)):
            raise ExportError(f"{path}: {class_path} is not a lit_rec RecModule")
        try:
            module = instantiate_module(cls, {"_class_path": class_path, **hparams})
        except Exception as error:  # noqa: BLE001 - e.g. hyper-parameters saved without num_items
            if config is None:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ExportError(f"{path}: cannot rebuild {class_path} from its hyper-parameters ({reason}); pass --config") from None
            module = _module_from_config(Path(config))
    elif config is not None:
        module = _module_from_config(Path(config))
    else:
        raise ExportError(f"{path}: the checkpoint does not name its model class; pass --config (the run's config.yaml)")
    _load_weights(module, checkpoint["state_dict"], path)
    if not isinstance(module, RecModule):
        raise ExportError(f"{path}: {type(module).__name__} is not a lit_rec RecModule")
    return module.eval()


def scoring_network(module: nn.Module) -> nn.Module:
    """The network behind `score_candidates`: `module.scoring_network()`, else `network`, `online` or `policy.net`."""
    if hasattr(module, "scoring_network"):
        network = module.scoring_network()
    else:
        network = next((getattr(module, n) for n in ("network", "online", "policy") if hasattr(module, n)), None)
        network = getattr(network, "net", network)  # the global ActorCritic inside a personalised policy
    if not isinstance(network, nn.Module) or not hasattr(network, "score"):
        raise ExportError(f"{type(module).__name__} has no neural scoring network to export (only neural agents export)")
    return network


def export(module: nn.Module, out: str | Path) -> torch.jit.ScriptModule:
    """Scripts the module's scoring network into `out` (written atomically) and returns it."""
    network = scoring_network(module)
    frozen = copy.deepcopy(network).eval().requires_grad_(False)  # the artefact never builds autograd graphs
    for part in frozen.modules():  # training-time hooks (e.g. vmap helpers) are not part of scoring
        part._forward_pre_hooks.clear()
        part._forward_hooks.clear()
    artefact = torch.jit.script(ScoringArtefact(frozen))
    meta = {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "num_items": int(getattr(module, "num_items", -1)),
        "history_len": int(getattr(getattr(network, "encoder", None), "history_len", -1)),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    torch.jit.save(artefact, str(tmp), _extra_files={"lit_rec.json": json.dumps(meta)})
    os.replace(tmp, out)
    return artefact


def _max_difference(module: nn.Module, artefact: torch.jit.ScriptModule, seed: int = 0) -> float:
    """Largest |artefact - score_candidates| on random histories and candidates."""
    network = scoring_network(module)
    history_len = int(getattr(getattr(network, "encoder", None), "history_len", 10))
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(0, module.num_items + 1, (8, history_len), generator=g)
    history[:2, :-2] = 0  # short histories too
    candidates = torch.randint(1, module.num_items + 1, (8, 20), generator=g)
    batch = {"user": torch.zeros(8, dtype=torch.long), "history": history}
    with torch.no_grad():
        return float((artefact(history, candidates) - module.score_candidates(batch, candidates)).abs().max())


def main(argv: list[str] | None = None) -> None:
    """Command line: exports and checks the artefact; an unusable checkpoint is one line on stderr, exit 2."""
    parser = argparse.ArgumentParser(prog="python -m lit_rec.export", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint of a neural agent")
    parser.add_argument("--out", required=True, help="TorchScript file to write")
    parser.add_argument("--config", default=None, help="the run's config.yaml, for checkpoints without hyper-parameters")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        module = load_module(args.ckpt, args.config)
        artefact = export(module, args.out)
        difference = _max_difference(module, artefact)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"out": str(args.out), "class": type(module).__name__, "max_abs_difference": difference}))


if __name__ == "__main__":
    main()
