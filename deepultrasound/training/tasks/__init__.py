"""Built-in training tasks; each module registers its task with :func:`~deepultrasound.training.task.register_task`."""
