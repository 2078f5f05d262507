"""Model construction: timm's registry plus agfprune's own CIFAR ResNets."""

from agfprune.core.models import cifar_resnet as _cifar_resnet  # noqa: F401  (registers models)
from agfprune.core.models.factory import LoadedModel, create_model, load_model

__all__ = ["LoadedModel", "create_model", "load_model"]
