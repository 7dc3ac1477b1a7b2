#!/usr/bin/env python
"""Train and evaluate libra-d2 models with detectron2's DefaultTrainer.

    python train_net.py --config-file configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml
    python train_net.py --config-file configs/COCO-Detection/libra_faster_rcnn_R_50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CONFIG --resume        # continue exactly from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file configs/lazy/libra_faster_rcnn_R_50_FPN_1x.py --num-gpus 8 train.max_iter=1000

A ``.py`` config file is a detectron2 LazyConfig: it is trained and evaluated by
:mod:`libra_d2.engine.lazy` (detectron2's LazyConfig loop with the same exact resume, atomic
checkpoints and data checks), and the overrides are ``key=value`` pairs.

Multi-GPU / multi-machine runs use detectron2's ``launch`` (``--num-gpus``,
``--num-machines``, ``--machine-rank``, ``--dist-url``). The evaluation results dict is
also written to ``OUTPUT_DIR/eval_results.json``.
"""
import logging
import sys

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results

from libra_d2.config import LibraConfigError, get_libra_cfg
from libra_d2.data.checks import DatasetError
from libra_d2.engine import LibraTrainer, write_results

logger = logging.getLogger("libra_d2")


def setup(args):
    cfg = get_libra_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def is_lazy(path):
    return path.endswith(".py")


def main(args):
    if is_lazy(args.config_file):
        from libra_d2.engine.lazy import main_lazy

        return main_lazy(args)
    cfg = setup(args)
    if args.eval_only:
        model = LibraTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = LibraTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        write_results(cfg.OUTPUT_DIR, res)
        return res
    trainer = LibraTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    res = trainer.train()
    # DefaultTrainer.train() returns the final evaluation only when TEST.EXPECTED_RESULTS is
    # set; the EvalHook keeps it on the trainer either way.
    res = res or getattr(trainer, "_last_eval_results", None)
    write_results(cfg.OUTPUT_DIR, res)
    return res


def check_launch(args):
    """Several processes on CPU need a ``launch()`` that can use gloo (detectron2 main);
    detectron2 0.6's hard-codes NCCL and would crash in every worker. Say so up front."""
    if args.num_gpus * args.num_machines <= 1:
        return
    import torch

    from libra_d2.utils.env import launch_supports_cpu

    if is_lazy(args.config_file):
        from detectron2.config import LazyConfig

        lazy = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
        device = str(lazy.train.get("device", "cuda"))
    else:
        cfg = get_libra_cfg(args.config_file, args.opts)
        device = cfg.MODEL.DEVICE
    on_cpu = device == "cpu" or not torch.cuda.is_available()
    if on_cpu and not launch_supports_cpu():
        raise LibraConfigError(
            f"--num-gpus {args.num_gpus} x --num-machines {args.num_machines} on CPU: this detectron2's launch() "
            "hard-codes the NCCL backend, which needs CUDA GPUs, so it cannot start several CPU processes. "
            "Use --num-gpus 1, or a detectron2 whose launch() falls back to gloo (main; see docs/compatibility.md)"
        )
    if on_cpu and args.num_gpus > 1 and torch.cuda.is_available() and device == "cpu":
        raise LibraConfigError(
            "MODEL.DEVICE cpu with --num-gpus > 1 on a machine with CUDA: detectron2's launch() picks NCCL "
            "whenever CUDA is available, which cannot reduce CPU tensors; train on the GPUs or with one process"
        )


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    try:
        check_launch(args)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except LibraConfigError as e:
        print(f"train_net.py: config error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except DatasetError as e:
        print(f"train_net.py: dataset error: {e}", file=sys.stderr, flush=True)
        sys.exit(3)


if __name__ == "__main__":
    cli()
