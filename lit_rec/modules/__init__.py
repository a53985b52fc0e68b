"""LightningModules of every lit_rec method."""
