"""Continuing a trainer's training stream at the position a checkpoint was taken."""
__all__ = ["continue_stream_at", "resume_stream"]


def continue_stream_at(trainer, loader):
    """Make detectron2's ``SimpleTrainer``/``AMPTrainer`` ``trainer`` read ``loader`` (a
    position-addressed loader that starts at the resumed iteration) from its next step on.

    detectron2 0.6 creates the data iterator in ``__init__``; main creates it lazily at the
    first ``run_step``: both are handled, and on main no iterator (hence no worker process
    and no draw from the global RNGs) is created before training starts."""
    trainer.data_loader = loader
    if hasattr(trainer, "_data_loader_iter_obj"):  # detectron2 main: created lazily
        trainer._data_loader_iter_obj = None
    else:  # detectron2 0.6: created in __init__
        trainer._data_loader_iter = iter(loader)


def resume_stream(trainer, start_iter: int, make_loader):
    """The one resume step of both trainers: after the checkpoint was loaded, a run that
    resumes (``start_iter > 0``) reads ``make_loader(start_iter)`` (the position-addressed
    loader at the resumed iteration) from its next step on. Returns ``start_iter``."""
    if start_iter > 0:
        continue_stream_at(trainer, make_loader(start_iter))
    return start_iter
