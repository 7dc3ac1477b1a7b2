"""Key renaming between pytorch-style (torchvision / mmdetection) ResNets and detectron2's."""
import re
from typing import Optional

_LAYER = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")


def resnet_key_to_d2(key: str) -> Optional[str]:
    """Map a torchvision-style ResNet/ResNeXt key to detectron2's ResNet key.

    ``conv1`` / ``bn1`` -> ``stem.conv1`` / ``stem.conv1.norm``; ``layerI.J.convK`` / ``bnK``
    -> ``res{I+1}.J.convK`` / ``.norm``; ``downsample.0`` / ``downsample.1`` -> ``shortcut`` /
    ``shortcut.norm``. Returns None for keys with no detectron2 counterpart (``fc.*``,
    ``num_batches_tracked``)."""
    if key.endswith("num_batches_tracked") or key.startswith("fc."):
        return None
    if key.startswith("conv1."):
        return "stem.conv1." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1."):]
    m = _LAYER.match(key)
    if not m:
        return None
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    prefix = f"res{stage}.{block}."
    m2 = re.match(r"^conv(\d)\.(.+)$", rest)
    if m2:
        return f"{prefix}conv{m2.group(1)}.{m2.group(2)}"
    m2 = re.match(r"^bn(\d)\.(.+)$", rest)
    if m2:
        return f"{prefix}conv{m2.group(1)}.norm.{m2.group(2)}"
    if rest.startswith("downsample.0."):
        return prefix + "shortcut." + rest[len("downsample.0."):]
    if rest.startswith("downsample.1."):
        return prefix + "shortcut.norm." + rest[len("downsample.1."):]
    return None
