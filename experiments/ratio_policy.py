"""Ratio policies: turn a paper's description ("conv 1 and 8-13 at 50%", "first conv of
each block, 60/30/10% per stage, skipping layers 16, 18, ...") into {module name: ratio}.

Layers are numbered as in Li et al. 2017: convs in forward order from 1 (the stem).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

from experiments.models.registry import conv_layers
from experiments.validation import ConfigError, check_ratio


@dataclass
class ConvIndexRatios:
    """{conv layer number (1 = first conv): ratio}; other layers keep their channels."""

    ratios: Mapping[int, float]

    def __call__(self, model: nn.Module) -> dict[str, float]:
        convs = conv_layers(model)
        out = {}
        for index, ratio in self.ratios.items():
            if not 1 <= int(index) <= len(convs):
                raise ConfigError(f"strategy.ratio.ratios names conv layer {index}; the model has convs 1..{len(convs)}")
            out[convs[int(index) - 1]] = check_ratio(f"strategy.ratio.ratios.{index}", ratio)
        return out


@dataclass
class ResNetStageRatios:
    """Li et al.'s ResNet rule: prune only the first conv of each residual block, at one
    ratio per stage, skipping the listed (sensitive) layer numbers."""

    stage_ratios: list[float]
    skip: list[int] = field(default_factory=list)
    block_pattern: str = r"layer(\d+)\.\d+\.conv1$"

    def __call__(self, model: nn.Module) -> dict[str, float]:
        convs = conv_layers(model)
        pattern = re.compile(self.block_pattern)
        out = {}
        for number, name in enumerate(convs, start=1):
            match = pattern.search(name)
            if match is None or number in self.skip:
                continue
            stage = int(match.group(1)) - 1
            if stage >= len(self.stage_ratios):
                raise ConfigError(
                    f"strategy.ratio.stage_ratios has {len(self.stage_ratios)} entries but {name!r} is in stage {stage + 1}"
                )
            ratio = check_ratio(f"strategy.ratio.stage_ratios[{stage}]", self.stage_ratios[stage])
            if ratio > 0:
                out[name] = ratio
        if not out:
            raise ConfigError(f"strategy.ratio: no layer matched {self.block_pattern!r}; is this a ResNet?")
        return out
