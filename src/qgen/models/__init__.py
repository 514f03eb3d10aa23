"""Model registry and the study's networks: NiN, CIFAR ResNet / ResNet-18, VGG-11/16, small ViT.

``build_model(spec, in_channels, num_classes, input_size)`` builds a freshly initialized model
from a :class:`~qgen.config.ModelSpec`; ``model_names()`` lists what is registered;
``register_model(name)`` adds a factory. Weights come from torch's global RNG (the caller
seeds it). Every weight sits in a plain ``nn.Conv2d`` or ``nn.Linear`` module, and modules are
registered in execution order: the first such layer in ``named_modules()`` sees the network
input and the last produces the logits; the quantizer checks this against the order the
layers actually run in.

Zoo networks (``tv:<arch>``, ``timm:<arch>``) come from torchvision and timm through
:mod:`qgen.models.zoo` (the ``vision`` extra), with random weights or a user's checkpoint.
"""

from qgen.models import nin, resnet, vgg, vit  # noqa: F401  (importing registers the models)
from qgen.models.registry import build_model, check_model_name, model_names, register_model

__all__ = ["build_model", "check_model_name", "model_names", "register_model"]
