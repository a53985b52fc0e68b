"""Train, test and predict with any lit_rec method: `python train.py fit --config dqn` (a shipped config's name,
or a path such as configs/dqn.yaml); the same as the installed `lit-rec` command."""

from lit_rec.console import main

if __name__ == "__main__":
    main()
