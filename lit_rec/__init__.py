"""lit_rec: deep reinforcement-learning recommenders on PyTorch Lightning."""
