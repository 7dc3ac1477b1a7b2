"""Training and evaluating LazyConfig (Python) configs, with the yacs path's guarantees.

``train_net.py --config-file x.py`` lands here (a ``.yaml`` goes to ``LibraTrainer``). The
loop is detectron2's LazyConfig one (``tools/lazyconfig_train_net.py``: ``instantiate`` the
model, optimizer, data and LR multiplier; ``SimpleTrainer``/``AMPTrainer`` with detectron2's
hooks), with what ``LibraTrainer`` adds to the yacs path:

* **exact ``--resume``**: the train loader is rebuilt from ``dataloader.train``'s dataset,
  mapper, batch size and worker count as the position-addressed loader of
  :mod:`libra_d2.data.build` (aspect-ratio grouping as ``build_detection_train_loader``'s
  ``aspect_ratio_grouping``, default on; a ``sampler`` given as detectron2's
  ``TrainingSampler``, ``RepeatFactorTrainingSampler(repeat_factors=...)`` or
  ``RandomSubsetTrainingSampler(subset_ratio=...)`` keeps its meaning; any other is an
  error), the main process is reseeded every iteration, and checkpoints hold the trainer
  state (optimizer, iteration; the LR multiplier follows the iteration) and the base seed.
  ``train.exact_resume=False`` uses ``instantiate(dataloader.train)`` as detectron2 does;
* **atomic checkpoints**, the **data checks** of the yacs path, and CPU DDP without GPU ids;
* ``OUTPUT_DIR/eval_results.json`` after evaluation, as in the yacs path.

All of it is :mod:`libra_d2.engine`, shared with ``LibraTrainer``; this module only
translates the LazyConfig layout into it.

Config layout: detectron2's (``model``, ``dataloader.{train,test,evaluator}``,
``optimizer``, ``lr_multiplier``, ``train``), plus optional ``train.seed`` (base seed; < 0:
random) and ``train.exact_resume`` (default True). The optimizer is the yacs path's
(:func:`libra_d2.engine.optimizer.clipped_optimizer`, the yacs ``SOLVER.CLIP_GRADIENTS``).
``do_train``, ``do_test`` and ``main_lazy`` follow detectron2's ``tools/lazyconfig_train_net.py``.
"""
import logging
import weakref

from detectron2.utils import comm

__all__ = ["setup_lazy", "main_lazy", "do_train", "do_test"]

logger = logging.getLogger("libra_d2")


def do_test(cfg, model):
    """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator`` (a
    ``COCOEvaluator`` gets libra-d2's evaluator arguments unless the config sets them)."""
    import copy

    from detectron2.config import instantiate
    from detectron2.evaluation import inference_on_dataset, print_csv_format

    from .evaluation import coco_evaluator_kwargs

    if cfg.dataloader.get("evaluator") is None or cfg.dataloader.get("test") is None:
        return {}
    ev = copy.deepcopy(cfg.dataloader.evaluator)
    if _target_name(ev) == "COCOEvaluator":
        for key, value in coco_evaluator_kwargs().items():
            ev.setdefault(key, value)
    res = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(ev))
    if comm.is_main_process():
        print_csv_format(res)
    return res


def _target_name(node):
    t = node.get("_target_") if hasattr(node, "get") else None
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def do_train(args, cfg):
    """detectron2's LazyConfig training loop on the engine (seeding, stream, resume, DDP,
    atomic checkpoints); evaluates with ``EvalHook`` (every ``train.eval_period`` and once at
    the end, as detectron2's ``lazyconfig_train_net.py``) and returns that last result."""
    from detectron2.config import instantiate
    from detectron2.engine import AMPTrainer, SimpleTrainer, hooks
    from detectron2.engine.defaults import default_writers

    from ..data.build import build_loader, stream_from_lazy
    from ..utils.seeding import IterationSeedHook, resolve_base_seed
    from .checkpoint import AtomicDetectionCheckpointer
    from .cpu_amp import cpu_autocast_trainer
    from .distributed import create_ddp_model
    from .resume import resume_stream

    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    seed_hook = IterationSeedHook(resolve_base_seed(cfg.train.get("seed", -1)))
    exact = bool(cfg.train.get("exact_resume", True))
    stream = stream_from_lazy(cfg.dataloader.train, seed_hook.base_seed) if exact else None
    train_loader = build_loader(stream, seed_hook.base_seed) if exact else instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **cfg.train.get("ddp", {}))
    amp = cfg.train.get("amp", {}).get("enabled", False)
    trainer = cpu_autocast_trainer((AMPTrainer if amp else SimpleTrainer)(model, train_loader, optim))
    # the trainer's state holds the optimizer, the iteration and its hooks' states (the seed hook's
    # base seed among them)
    checkpointer = AtomicDetectionCheckpointer(model, cfg.train.output_dir, trainer=weakref.proxy(trainer))
    ck = cfg.train.get("checkpointer", {"period": 5000})
    final = {}

    def evaluate():
        final["results"] = do_test(cfg, model.module if hasattr(model, "module") else model)
        return final["results"]

    trainer.register_hooks([
        seed_hook,
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **ck) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.get("eval_period", 0), evaluate),
        hooks.PeriodicWriter(
            default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.get("log_period", 20)
        ) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    if exact:  # continue the training stream at the checkpoint's position
        resume_stream(trainer, start_iter, lambda it: build_loader(stream, seed_hook.base_seed, it))
    trainer.train(start_iter, cfg.train.max_iter)
    return final.get("results", {})


def setup_lazy(args):
    """Load ``args.config_file`` (a LazyConfig .py/.yaml), apply ``key=value`` overrides and
    run detectron2's ``default_setup`` (the libra-d2 components check their own arguments when
    ``instantiate`` builds them)."""
    from detectron2.config import LazyConfig
    from detectron2.engine import default_setup

    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    default_setup(cfg, args)
    return cfg


def main_lazy(args):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate

    from .evaluation import write_results

    cfg = setup_lazy(args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        res = do_test(cfg, model)
    else:
        res = do_train(args, cfg)
    write_results(cfg.train.output_dir, res)
    return res
