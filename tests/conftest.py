"""Test-wide environment: W&B disabled and silent, no API key, no LIT_REC_DEBUG."""

import os
import sys
from pathlib import Path

os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("LIT_REC_DEBUG", None)

import pytest
import torch.multiprocessing

# ddp_spawn children otherwise fail to unpickle shared tensors ("unable to resize file")
torch.multiprocessing.set_sharing_strategy("file_system")

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def cli_runs(tmp_path_factory: pytest.TempPathFactory):
    """`cli_harness.MethodRuns`: fits of every method config through `train.py` in fresh processes (a fork
    server pays the imports once); each method's uninterrupted fit runs once per session."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import cli_harness

    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    env.pop("LIT_REC_DEBUG", None)
    server = cli_harness.ForkServer(env)
    try:
        yield cli_harness.MethodRuns(server, tmp_path_factory.mktemp("cli_runs"))
    finally:
        server.close()
