"""Methods that need their own training step (registered with ``register_step_builder``)."""
