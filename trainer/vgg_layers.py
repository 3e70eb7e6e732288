"""The VGG layer table (torch-free): config checks use it before torch is imported."""

from __future__ import annotations

# conv widths per block; "M" = max-pool. torchvision's ``features`` indices follow this order.
VGG_CFG: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
    ],
}


def _layer_names(cfg: list[int | str]) -> list[str]:
    names, block, conv = [], 1, 0
    for c in cfg:
        if c == "M":
            block, conv = block + 1, 0
        else:
            conv += 1
            names.append(f"relu{block}_{conv}")
    return names


#: the ReLU outputs each network offers, e.g. ``relu3_3``
VGG_LAYERS: dict[str, list[str]] = {k: _layer_names(v) for k, v in VGG_CFG.items()}
