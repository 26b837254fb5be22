"""Training (conf/trainer): the loop (trainer.py), the batches it is fed (batches.py) and its checkpoints
(checkpoint.py)."""
