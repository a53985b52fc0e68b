"""Reading a DRL-Rec teacher: the online and target networks of a DQN checkpoint, checked against the student's data."""

from __future__ import annotations

import copy
import inspect

import torch

from lit_rec.modules.base import RecModule
from lit_rec.modules.dqn import DQN
from lit_rec.networks import EncoderConfig, QNetwork


def load_teacher(path: str, num_items: int, num_users: int) -> DQN:
    """The DQN of a Lightning checkpoint (its hyperparameters, online and target weights), on CPU."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    accepted = (set(inspect.signature(DQN.__init__).parameters) | set(inspect.signature(RecModule.__init__).parameters)) - {
        "self", "kwargs", "num_items", "num_users"
    }
    saved = dict(checkpoint.get("hyper_parameters", {}))
    shape = {k: saved.pop(k) for k in EncoderConfig.__dataclass_fields__ if k in saved}  # a checkpoint from before EncoderConfig
    if shape:
        saved.setdefault("encoder", EncoderConfig(**shape))
    hparams = {k: v for k, v in saved.items() if k in accepted}
    with torch.random.fork_rng(devices=[]):  # building a DQN must not move the global RNG
        teacher = DQN(num_items=num_items, num_users=num_users, **hparams)
    for name in ("online", "target"):
        prefix = f"{name}."
        weights = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        if not weights:
            raise ValueError(f"teacher checkpoint {path} has no '{prefix}*' weights: is it a DQN run (configs/drlrec_teacher.yaml)?")
        try:
            getattr(teacher, name).load_state_dict(weights)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[-1].strip()
            raise ValueError(f"teacher checkpoint {path} does not fit this data's catalogue ({num_items} items): {first}") from None
    return teacher


def teacher_networks(path: str, student: RecModule, width: int | None = None) -> tuple[QNetwork, QNetwork]:
    """The teacher's `(online, target)` networks from checkpoint `path`, checked against the student's catalogue and
    history length and, when given, the expected `width` (the student's `teacher_encoder.dim`)."""
    teacher = load_teacher(path, student.num_items, student.num_users)
    if teacher.history_len != student.history_len:
        raise ValueError(f"teacher {path} has history_len={teacher.history_len}, the student {student.history_len}")
    if width is not None and teacher.online.encoder.dim != width:
        dim = teacher.online.encoder.dim
        raise ValueError(f"teacher {path} has width {dim}, but teacher_encoder.dim={width}: set --model.init_args.teacher_encoder.dim={dim}")
    return teacher.online, teacher.target


def fresh_teacher_networks(student: DQN, encoder: EncoderConfig) -> tuple[QNetwork, QNetwork]:
    """A new teacher's `(online, target)` with an encoder of that shape, seeded from the student's `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(student.seed + 100)
        online = student.build_network(encoder)
    return online, copy.deepcopy(online)
