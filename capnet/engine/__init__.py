"""Training and evaluation: everything that runs a CapNet model over a dataset."""
