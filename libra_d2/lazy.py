"""Training and evaluating LazyConfig (Python) configs, with the yacs path's guarantees.

``train_net.py --config-file x.py`` lands here (a ``.yaml`` goes to ``LibraTrainer``). The
loop is detectron2's LazyConfig one (``tools/lazyconfig_train_net.py``: ``instantiate`` the
model, optimizer, data and LR multiplier; ``SimpleTrainer``/``AMPTrainer`` with detectron2's
hooks), with what ``LibraTrainer`` adds to the yacs path:

* **exact ``--resume``**: the train loader is rebuilt from ``dataloader.train``'s dataset,
  mapper, batch size and worker count as the position-addressed loader of
  :mod:`libra_d2.data.samplers` (aspect-ratio grouping as ``build_detection_train_loader``'s
  ``aspect_ratio_grouping``, default on; a ``sampler`` given as detectron2's
  ``TrainingSampler``, ``RepeatFactorTrainingSampler(repeat_factors=...)`` or
  ``RandomSubsetTrainingSampler(subset_ratio=...)`` keeps its meaning; any other is an
  error), the main process is reseeded every iteration, and checkpoints hold the trainer
  state (optimizer, iteration; the LR multiplier follows the iteration) and the base seed.
  ``train.exact_resume=False`` uses ``instantiate(dataloader.train)`` as detectron2 does;
* **atomic checkpoints**, the **data checks** of the yacs path, and CPU DDP without GPU ids;
* ``OUTPUT_DIR/eval_results.json`` after evaluation, as in the yacs path.

Config layout: detectron2's (``model``, ``dataloader.{train,test,evaluator}``,
``optimizer``, ``lr_multiplier``, ``train``), plus optional ``train.seed`` (base seed; < 0:
random) and ``train.exact_resume`` (default True). :func:`clipped_optimizer` gives lazy
configs the yacs ``SOLVER.CLIP_GRADIENTS``.
"""
import json
import logging
import os
import weakref

import torch
from detectron2.utils import comm

__all__ = ["d2_config", "clipped_optimizer", "setup_lazy", "main_lazy", "build_exact_train_loader", "do_train", "do_test"]

logger = logging.getLogger("libra_d2")


def d2_config(relpath: str):
    """detectron2's packaged LazyConfig ``relpath`` (e.g. ``"common/models/mask_rcnn_fpn.py"``),
    as ``detectron2.model_zoo.get_config`` returns it, without importing
    ``detectron2.model_zoo`` (on detectron2 main it imports ``pkg_resources``, which current
    setuptools no longer ships)."""
    import importlib.util

    from detectron2.config import LazyConfig

    root = importlib.util.find_spec("detectron2").submodule_search_locations[0]
    path = os.path.join(root, "model_zoo", "configs", relpath)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{relpath} is not among this detectron2's packaged configs ({os.path.dirname(path)})")
    return LazyConfig.load(path)


def clipped_optimizer(optimizer, params, clip_value=None, clip_type="norm", norm_type=2.0, **kwargs):
    """``optimizer(params, **kwargs)`` with detectron2's gradient clipping (the yacs
    ``SOLVER.CLIP_GRADIENTS``: ``clip_type`` "value" or "norm" (per parameter), ``clip_value``;
    None: no clipping). For LazyCall: ``L(clipped_optimizer)(optimizer=torch.optim.AdamW,
    params=L(get_default_optimizer_params)(), lr=1e-3, weight_decay=0.05, clip_value=5.0)``."""
    if clip_value is None:
        return optimizer(params, **kwargs)
    from detectron2.config import CfgNode as CN
    from detectron2.solver.build import maybe_add_gradient_clipping

    cfg = CN({"SOLVER": {"CLIP_GRADIENTS": {"ENABLED": True, "CLIP_TYPE": clip_type, "CLIP_VALUE": float(clip_value),
                                            "NORM_TYPE": float(norm_type)}}})
    return maybe_add_gradient_clipping(cfg, optimizer)(params, **kwargs)


def _target_name(node):
    t = node.get("_target_") if hasattr(node, "get") else None
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def build_exact_train_loader(loader_cfg, seed, start_iter=0):
    """Position-addressed train loader from a LazyConfig ``dataloader.train`` node (see the
    module doc); batch ``start_iter`` first."""
    from detectron2.config import instantiate

    from .data.checks import sanitize_boxes
    from .data.samplers import PositionBatchSampler, aspect_groups
    from .training import PositionSeededDataset, _as_batch

    dicts = instantiate(loader_cfg.dataset)
    if not isinstance(dicts, list):
        raise ValueError("exact resume needs dataloader.train.dataset to give a list of dataset dicts "
                         "(e.g. get_detection_dataset_dicts); set train.exact_resume=False otherwise")
    dicts = sanitize_boxes(dicts, "dataloader.train.dataset")
    mapper = instantiate(loader_cfg.mapper)
    world = comm.get_world_size()
    total = int(loader_cfg.total_batch_size)
    if total % world:
        raise ValueError(f"dataloader.train.total_batch_size = {total} is not divisible by the number of processes ({world})")
    plan = {"groups": aspect_groups(dicts) if loader_cfg.get("aspect_ratio_grouping", True) else None}
    sampler = loader_cfg.get("sampler", None)
    if sampler is not None:
        name = _target_name(sampler)
        if name == "RepeatFactorTrainingSampler":
            plan["repeat_factors"] = torch.as_tensor(instantiate(sampler.repeat_factors), dtype=torch.float64)
        elif name == "RandomSubsetTrainingSampler":
            n = int(len(dicts) * float(sampler.subset_ratio))
            if not 0 < n <= len(dicts):
                raise ValueError(f"RandomSubsetTrainingSampler subset_ratio = {sampler.subset_ratio} selects no image")
            from .data.samplers import _generator, seed_from

            plan["subset"] = torch.randperm(len(dicts), generator=_generator(seed_from(seed, 3)))[:n]
        elif name != "TrainingSampler":
            raise ValueError(
                f"dataloader.train.sampler = {name} is not supported by the exact-resume loader (supported: "
                "TrainingSampler, RepeatFactorTrainingSampler, RandomSubsetTrainingSampler); set "
                "train.exact_resume=False to use detectron2's loader without exact resume"
            )
    batch_sampler = PositionBatchSampler(len(dicts), total // world, seed, start=start_iter, rank=comm.get_rank(),
                                         world_size=world, **plan)
    return torch.utils.data.DataLoader(PositionSeededDataset(dicts, mapper, seed), batch_sampler=batch_sampler,
                                       num_workers=int(loader_cfg.get("num_workers", 0)), collate_fn=_as_batch)


def do_test(cfg, model):
    from detectron2.config import instantiate
    from detectron2.evaluation import inference_on_dataset, print_csv_format

    if "evaluator" not in cfg.dataloader or "test" not in cfg.dataloader:
        return {}
    import copy

    from .utils.env import detectron2_has_cpp_ops

    ev = copy.deepcopy(cfg.dataloader.evaluator)
    if _target_name(ev) == "COCOEvaluator" and "use_fast_impl" not in ev:
        ev.use_fast_impl = detectron2_has_cpp_ops()  # as the yacs path: the C++ evaluator only where it exists
    res = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(ev))
    if comm.is_main_process():
        print_csv_format(res)
    return res


def _write_results(cfg, res):
    if comm.is_main_process() and res:
        path = os.path.join(cfg.train.output_dir, "eval_results.json")
        with open(path, "w") as f:
            json.dump(res, f, indent=2)
        logger.info("Evaluation results written to %s", path)


def _base_seed(cfg):
    from .data.samplers import seed_from

    seed = int(cfg.train.get("seed", -1))
    if seed < 0:
        seed = seed_from(os.getpid(), int.from_bytes(os.urandom(4), "little"))
    return seed


def do_train(args, cfg):
    from detectron2.config import instantiate
    from detectron2.engine import AMPTrainer, SimpleTrainer, hooks

    from .training import AtomicDetectionCheckpointer, IterationSeedHook

    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    seed_hook = IterationSeedHook(_base_seed(cfg))
    exact = bool(cfg.train.get("exact_resume", True))
    train_loader = build_exact_train_loader(cfg.dataloader.train, seed_hook.base_seed) if exact else \
        instantiate(cfg.dataloader.train)

    if comm.get_world_size() > 1:
        if next(model.parameters()).device.type == "cpu":
            model = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
        else:
            from detectron2.engine.defaults import create_ddp_model

            model = create_ddp_model(model, **cfg.train.get("ddp", {}))
    amp = cfg.train.get("amp", {}).get("enabled", False)
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, train_loader, optim)
    # the trainer's state holds the optimizer, the iteration and its hooks' states (the seed hook's
    # base seed among them)
    checkpointer = AtomicDetectionCheckpointer(model, cfg.train.output_dir, trainer=weakref.proxy(trainer))
    ck = cfg.train.get("checkpointer", {"period": 5000})
    trainer.register_hooks([
        seed_hook,
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **ck) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.get("eval_period", 0), lambda: do_test(cfg, model)),
        hooks.PeriodicWriter(
            _default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.get("log_period", 20)
        ) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    if start_iter and exact:  # continue the training stream at the checkpoint's position
        trainer.data_loader = build_exact_train_loader(cfg.dataloader.train, seed_hook.base_seed, start_iter)
        if hasattr(trainer, "_data_loader_iter_obj"):  # detectron2 main: created lazily
            trainer._data_loader_iter_obj = None
        else:  # detectron2 0.6: created in __init__
            trainer._data_loader_iter = iter(trainer.data_loader)
    trainer.train(start_iter, cfg.train.max_iter)
    res = do_test(cfg, model.module if hasattr(model, "module") else model)
    _write_results(cfg, res)
    return res


def _default_writers(output_dir, max_iter):
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

    return [CommonMetricPrinter(max_iter), JSONWriter(os.path.join(output_dir, "metrics.json")),
            TensorboardXWriter(output_dir)]


def setup_lazy(args):
    """Load ``args.config_file`` (a LazyConfig .py/.yaml), apply ``key=value`` overrides,
    check the libra-d2 parts by instantiating nothing yet, and run detectron2's default_setup."""
    from detectron2.config import LazyConfig
    from detectron2.engine import default_setup

    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    default_setup(cfg, args)
    return cfg


def main_lazy(args):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate

    cfg = setup_lazy(args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        res = do_test(cfg, model)
        _write_results(cfg, res)
        return res
    return do_train(args, cfg)
