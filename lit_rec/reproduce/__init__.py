"""Reproduces Table 1 and Figure 2 of the DADRL paper and the DRL-Rec distillation report on one data set.

```
python -m lit_rec.reproduce --data configs/data/ml100k.yaml --data.path ../shared/data/ml-100k --out DIR \\
    [--budget smoke|quick|full] [--seeds N] [--methods DQN,DADRL] [--wandb offline|online|disabled]
```

Every method of `METHODS` is trained with the same data, split and frozen negatives (one data config, one
data seed), then tested. The budget rule: each method trains until validation stops improving, within the
same cap for all. A run stops when `val/ctr@10` has not improved for `PATIENCE` validations (EarlyStopping)
or at the cap of `--budget` (`CAPS`: `max_epochs` and `max_time`, identical for every learned method), and
is tested with its best-validation checkpoint (the one ModelCheckpoint on `val/ctr@10`); the DRL-Rec
student distils from the teacher's best checkpoint of the same seed. Budgets: `quick` (ML-100K, every
method, one seed: <= 10 min of one core), `full` (ML-1M users 1-2999, one seed: <= 60 min), `smoke` (a few
steps in two epochs, for tests). Seeds 0..N-1 vary the model (`seed_everything` and
`model.init_args.seed`), never the data. Any other argument (`--data.format=csv`, `--data.user_col=...`,
`--trainer FILE`, `--trainer.max_epochs=...`) is passed to every run after its config, as in `train.py`.

Writes to DIR: `table1.md` / `table1.json` (test CTR@k, AUC and ndcg@10_full, mean ± std over seeds, the
best epoch and the seconds of training of each method), `fig2_ctr.png` (`train/ctr` against
`train/episodes`, every method), `distill.md` / `distill.json` (teacher, student, student alone:
parameters, latency, AUC, CTR@k), `runs.json` (every run's metrics, curves, best epoch, epochs run and
what stopped it), `configs/` (the exact config of every run: `python train.py fit --config
DIR/configs/X.yaml` reruns one), `checkpoints/<run>/best.ckpt` (each run's best-validation checkpoint, the
one tested), `logs/` (each run's output) and `runs/<run>/wandb/offline-run-*` (one W&B run per training
run, all in one group, plus a `report` run with the tables and the figure).

A method is one line of `METHODS` in `methods.py` (a config file and its budgets): docs/ADDING_A_METHOD.md.

The package: `methods` (the registry, budgets and cap), `cli` (the command line), `runner` (every method
and seed), `fit` (one run: config, fit, test), `curves` (CurveRecorder, best epoch), `report` (Table 1),
`distill` (the DRL-Rec report), `figures` (Figure 2), `wandb_runs` (the W&B runs of a reproduction).
"""

from lit_rec.reproduce.cli import main
from lit_rec.reproduce.curves import CurveRecorder, best_epoch, best_validation
from lit_rec.reproduce.figures import plot_fig2
from lit_rec.reproduce.fit import RunResult, Settings
from lit_rec.reproduce.methods import (BUDGETS, CAPS, DEFAULT_BUDGETS, KS, METHODS, MIN_EPOCHS, MONITOR, PATIENCE,
                                       Method, cap_seconds, cap_text, capped, select_methods)
from lit_rec.reproduce.report import format_table1, table_rows

__all__ = [
    "BUDGETS", "CAPS", "DEFAULT_BUDGETS", "KS", "METHODS", "MIN_EPOCHS", "MONITOR", "PATIENCE", "CurveRecorder",
    "Method", "RunResult", "Settings", "best_epoch", "best_validation", "cap_seconds", "cap_text", "capped",
    "format_table1", "main", "plot_fig2", "select_methods", "table_rows",
]
