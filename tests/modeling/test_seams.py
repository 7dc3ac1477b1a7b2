"""The model's seams: what tools and reports reach through instead of patching the model.
The head's proposal labelling, the RoI samplers' injectable generator, the features a
loss-based sampler needs as a parameter, the RPN's subset draw, the sampler-path choice."""
import pytest
import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from tests.conftest import inputs, small_heads  # noqa: E402


def test_match_proposals_labels_as_the_head_does(libra_cfg):
    _, heads = small_heads(libra_cfg, "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", False)
    h, w = 100, 100
    gt = Instances((h, w), gt_boxes=Boxes(torch.tensor([[0.0, 0, 10, 10], [50, 50, 70, 70]])),
                   gt_classes=torch.tensor([2, 0]))
    # IoU with its box: 1.0 (fg), 40/100 (bg), 0 (bg); the last one matches box 1 at 300/400 (fg)
    props = Instances((h, w), proposal_boxes=Boxes(torch.tensor(
        [[0.0, 0, 10, 10], [0, 0, 10, 4], [80, 80, 90, 90], [50, 50, 65, 70]])))
    out, labels = heads.match_proposals([props], [gt])
    matched_idxs, gt_classes, max_iou = labels[0]
    assert out[0] is props  # nothing appended
    assert gt_classes.tolist() == [2, 4, 4, 0]  # background = num_classes (4)
    assert matched_idxs[[0, 3]].tolist() == [0, 1]
    torch.testing.assert_close(max_iou, torch.tensor([1.0, 0.4, 0.0, 0.75]))
    empty = Instances((h, w), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    _, labels = heads.match_proposals([props], [empty])
    assert labels[0][1].tolist() == [4] * 4 and labels[0][2].tolist() == [0.0] * 4


@pytest.mark.parametrize("method", ["numpy", "torch"])
def test_the_samplers_draw_from_the_injected_generator(libra_cfg, method):
    _, heads = small_heads(libra_cfg)
    heads.sampler_method = method
    _, _, props, targets = inputs()
    picks = []
    for global_seed in (0, 1):
        heads.sampling_generator = torch.Generator().manual_seed(7)
        torch.manual_seed(global_seed)  # the global generator no longer decides the sample
        with EventStorage():
            picks.append(heads.label_and_sample_proposals(props, targets)[0].proposal_boxes.tensor)
    assert torch.equal(picks[0], picks[1])
    heads.sampling_generator = torch.Generator().manual_seed(8)
    with EventStorage():
        other = heads.label_and_sample_proposals(props, targets)[0].proposal_boxes.tensor
    assert not torch.equal(picks[0], other)


def test_a_loss_based_sampler_takes_the_features_as_a_parameter(libra_cfg):
    _, heads = small_heads(libra_cfg, "MODEL.LIBRA.POS_SAMPLER", "ohem", "MODEL.LIBRA.NEG_SAMPLER", "ohem")
    _, features, props, targets = inputs()
    with EventStorage():
        with pytest.raises(ValueError, match="needs the features"):
            heads.label_and_sample_proposals(props, targets)
        sampled = heads.label_and_sample_proposals(props, targets, features=features)
    assert sum(len(s) for s in sampled) == 2 * 64


def test_the_rpn_draws_its_capped_subsets_through_the_given_sampler(libra_cfg):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.proposal_generator import build_proposal_generator

    cfg = libra_cfg("Base-Libra-RCNN-FPN.yaml", "MODEL.LIBRA.RPN_NEG_POS_UB", 5.0)
    rpn = build_proposal_generator(cfg, {f"p{i}": ShapeSpec(channels=16, stride=2 ** i) for i in range(2, 7)})

    def lowest_first(candidates, num, generator=None):
        mask = torch.zeros_like(candidates)
        mask[candidates.nonzero().flatten()[: int(num)]] = True
        return mask

    rpn.subset_sampler = lowest_first
    label = torch.tensor([0, 1, 0, -1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    out = rpn._subsample_labels(label.clone())
    # both positives, then at most 5 x 2 = 10 negatives, the lowest indices first
    assert (out == 1).nonzero().flatten().tolist() == [1, 4]
    assert (out == 0).nonzero().flatten().tolist() == [0, 2, 5, 6, 7, 8, 9, 10, 11, 12]
    with pytest.raises(TypeError, match="subset_sampler"):
        type(rpn)(**{**type(rpn).from_config(cfg, {f"p{i}": ShapeSpec(channels=16, stride=2 ** i)
                                                    for i in range(2, 7)}), "subset_sampler": 3})


def test_the_sampler_path_is_chosen_in_one_place():
    from libra_d2.modeling.sampling import resolve_sampler_method

    assert resolve_sampler_method("auto", "cpu") == "numpy"
    assert resolve_sampler_method("auto", torch.device("cuda", 0)) == "torch"
    assert resolve_sampler_method("numpy", "cuda") == "numpy"  # an explicit choice is obeyed
    assert resolve_sampler_method("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="'auto', 'numpy' or 'torch'"):
        resolve_sampler_method("fast", "cpu")
