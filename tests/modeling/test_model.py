"""A Libra R-CNN R-50-FPN built from the shipped config: checkpoint compatibility and one step."""
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage


def batch(h=192, w=256):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, h, w, generator=g) * 255
    inst = Instances((h, w), gt_boxes=Boxes(torch.tensor([[10.0, 20, 100, 120], [120, 30, 250, 180]])), gt_classes=torch.tensor([0, 2]))
    empty = Instances((h, w), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    return [{"image": img, "instances": inst}, {"image": img.flip(-1), "instances": empty}]


def test_libra_r50_fpn_loads_stock_fpn_and_runs(libra_cfg):
    opts = ("MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", 0)
    torch.manual_seed(0)
    stock = build_model(libra_cfg("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", *opts))
    libra = build_model(libra_cfg("COCO-Detection/libra_faster_rcnn_R_50_FPN_1x.yaml", *opts))
    # same output names, strides and channels as stock FPN
    assert libra.backbone.output_shape() == stock.backbone.output_shape()
    assert libra.backbone.size_divisibility == stock.backbone.size_divisibility
    result = libra.backbone.load_state_dict(stock.backbone.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith("bfp.") for k in result.missing_keys), result.missing_keys
    # the whole detector: everything but the BFP matches stock Faster R-CNN's names
    result = libra.load_state_dict(stock.state_dict(), strict=False)
    assert result.unexpected_keys == [] and all(".bfp." in k for k in result.missing_keys)

    libra.train()
    opt = torch.optim.SGD(libra.parameters(), lr=1e-3, momentum=0.9)
    with EventStorage():
        losses = libra(batch())
        assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        opt.step()
    libra.eval()
    with torch.no_grad():
        out = libra([{"image": batch()[0]["image"], "height": 96, "width": 128}])
    inst = out[0]["instances"]
    assert inst.image_size == (96, 128)
    assert inst.pred_boxes.tensor.shape[1] == 4
