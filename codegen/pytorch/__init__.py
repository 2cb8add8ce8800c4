"""model.py: runnable torch.distributed code for one spec."""
