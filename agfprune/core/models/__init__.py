"""Model construction: timm's registry plus agfprune's own CIFAR ResNets."""

import sys

from agfprune.core.models import cifar_resnet as _cifar_resnet
from agfprune.core.models.factory import LoadedModel, create_model, load_model

if "timm" in sys.modules:  # otherwise registration waits for the first create_model that needs timm
    _cifar_resnet.register_in_timm()

__all__ = ["LoadedModel", "create_model", "load_model"]
