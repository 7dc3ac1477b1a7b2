"""Every shipped config loads after add_libra_config and builds a model; model-zoo backbone
files in detectron2's formats load into the Libra models with every backbone weight matched."""
import glob
import os
import pickle
import re

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from libra_d2.utils.convert import resnet_key_to_d2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(os.path.relpath(p, os.path.join(ROOT, "configs")) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def test_every_config_the_docs_tools_and_presets_name_exists_and_each_libra_config_has_its_plain_twin():
    texts = [open(os.path.join(ROOT, p)).read() for p in ["README.md", "dev/records/ablation.py",
                                                           "dev/seeded_identity.py", "Makefile"]]
    texts += [open(p).read() for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))]
    named = {m for t in texts for m in re.findall(r"configs/[\w./-]+\.(?:yaml|py)", t)}
    assert len(named) > 20
    missing = sorted(p for p in named if not os.path.isfile(os.path.join(ROOT, p)))
    assert not missing, f"configs named but not shipped: {missing}"
    for c in CONFIGS:  # Libra configs of come with the plain model they are measured against
        base = os.path.basename(c)
        if base.startswith("libra_") and ("R_18" in base or "R_50" in base):
            twin = base[len("libra_"):].replace("rcnn_R_18", "faster_rcnn_R_18", 1) if base.startswith(
                "libra_rcnn") else base[len("libra_"):]
            assert os.path.isfile(os.path.join(ROOT, "configs", os.path.dirname(c), twin)), f"{c}: no {twin}"


def enabled_components(model):
    """Which Libra components a built model uses: sampling, ohem, bfp, balanced_l1 (box head,
    RetinaNet), rpn_balanced_l1, rpn_cap."""
    from libra_d2.modeling.roi_heads import LibraSamplingMixin

    heads = getattr(model, "roi_heads", None)
    out = set()
    samplers = (heads.pos_sampler, heads.neg_sampler) if isinstance(heads, LibraSamplingMixin) else ("random", "random")
    if samplers == ("ohem", "ohem"):
        out.add("ohem")
    elif samplers != ("random", "random"):
        out.add("sampling")
    if any(type(m).__name__ == "BFP" for m in model.modules()):
        out.add("bfp")
    predictors = getattr(heads, "box_predictor", None)
    predictors = list(predictors) if isinstance(predictors, torch.nn.ModuleList) else [predictors]
    if any(getattr(p, "box_reg_loss_type", None) == "balanced_l1" for p in predictors if p is not None) or \
            getattr(model, "balanced_l1", None) is not None:
        out.add("balanced_l1")
    if getattr(getattr(model, "proposal_generator", None), "balanced_l1", None) is not None:
        out.add("rpn_balanced_l1")
    if getattr(getattr(model, "proposal_generator", None), "neg_pos_ub", -1) >= 0:
        out.add("rpn_cap")
    return out


@pytest.mark.parametrize("name,expected", [
    ("ablation_sampling_only_R_50_FPN_1x.yaml", {"sampling"}),
    ("ablation_bfp_only_R_50_FPN_1x.yaml", {"bfp"}),
    ("ablation_balanced_l1_only_R_50_FPN_1x.yaml", {"balanced_l1"}),
    ("faster_rcnn_R_50_FPN_1x.yaml", set()),
    ("libra_faster_rcnn_R_50_FPN_1x.yaml", {"sampling", "bfp", "balanced_l1", "rpn_cap"}),
    ("libra_retinanet_R_50_FPN_1x.yaml", {"bfp", "balanced_l1"}),
    ("ohem_faster_rcnn_R_50_FPN_1x.yaml", {"ohem"}),
    ("rpn_R_50_FPN_1x.yaml", set()),
    ("libra_rpn_R_50_FPN_1x.yaml", {"bfp", "rpn_balanced_l1", "rpn_cap"}),
])
def test_each_coco_config_enables_exactly_its_components(libra_cfg, name, expected):
    model = build_model(libra_cfg(f"COCO-Detection/{name}", "MODEL.WEIGHTS", ""))
    assert enabled_components(model) == expected


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds(libra_cfg, path):
    cfg = libra_cfg(path, "MODEL.WEIGHTS", "")
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
    if "libra" in os.path.basename(path).lower():
        names = {type(m).__name__ for m in model.modules()}
        assert "BFP" in names


def c2_name(d2_key):
    """detectron2 ResNet key -> Caffe2 model-zoo blob name (R-50.pkl style), or None."""
    k = d2_key
    if k.endswith(("running_mean", "running_var")):
        return None
    suffix = {"weight": "w", "bias": "b"}
    if k.startswith("stem.conv1.norm."):
        return "res_conv1_bn_" + {"weight": "s", "bias": "b"}[k.rsplit(".", 1)[1]]
    if k.startswith("stem.conv1."):
        return "conv1_" + suffix[k.rsplit(".", 1)[1]]
    m = re.match(r"^res(\d)\.(\d+)\.(conv\d|shortcut)\.(norm\.)?(weight|bias)$", k)
    stage, block, layer, norm, kind = m.groups()
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}[layer]
    base = f"res{stage}_{block}_{branch}"
    if norm:
        return f"{base}_bn_" + {"weight": "s", "bias": "b"}[kind]
    return f"{base}_{suffix[kind]}"


def assert_backbone_loaded(model, blobs, to_d2):
    sd = model.backbone.bottom_up.state_dict()
    matched = 0
    for k, v in sd.items():
        src = to_d2(k)
        if src is None:
            continue
        assert torch.equal(v, torch.as_tensor(blobs[src])), f"{k} not loaded from {src}"
        matched += 1
    assert matched > 100


def test_caffe2_r50_pkl_loads_into_libra_model(libra_cfg, tmp_path):
    cfg = libra_cfg("COCO-Detection/libra_faster_rcnn_R_50_FPN_1x.yaml", "MODEL.WEIGHTS", "")
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    blobs = {}
    for k, v in model.backbone.bottom_up.state_dict().items():
        name = c2_name(k)
        if name is not None:
            blobs[name] = rng.standard_normal(tuple(v.shape)).astype(np.float32)
    blobs["fc1000_w"] = rng.standard_normal((1000, 2048)).astype(np.float32)
    blobs["fc1000_b"] = rng.standard_normal(1000).astype(np.float32)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    DetectionCheckpointer(model).load(str(path))
    assert_backbone_loaded(model, blobs, c2_name)


def test_torchvision_backbone_converts_and_loads(libra_cfg, tmp_path):
    import torchvision

    from tools.convert_torchvision_backbone import main as convert

    tv = torchvision.models.resnet50(weights=None)
    torch.save(tv.state_dict(), tmp_path / "r50.pth")
    out = tmp_path / "R-50-tv.pkl"
    convert(["--input", str(tmp_path / "r50.pth"), "--output", str(out)])
    cfg = libra_cfg(
        "COCO-Detection/libra_faster_rcnn_X_101_64x4d_FPN_1x.yaml",
        "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.NUM_GROUPS", 1, "MODEL.RESNETS.WIDTH_PER_GROUP", 64,
    )
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(out))
    with open(out, "rb") as f:
        blobs = pickle.load(f)["model"]
    assert_backbone_loaded(model, blobs, lambda k: k if k in blobs else None)
    # every torchvision tensor except fc/num_batches_tracked found its place
    tv_keys = [k for k in tv.state_dict() if resnet_key_to_d2(k)]
    assert len(tv_keys) == len(blobs) and all(resnet_key_to_d2(k) in model.backbone.bottom_up.state_dict() for k in tv_keys)
