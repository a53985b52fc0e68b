"""Train, test and predict with any lit_rec method: `python train.py fit --config configs/<method>.yaml`."""

from lit_rec.cli import main

if __name__ == "__main__":
    main()
