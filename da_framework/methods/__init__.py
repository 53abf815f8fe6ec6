"""Methods that need their own training step, one file each; listed in ``da_framework.train.trainers.TRAINERS``."""
