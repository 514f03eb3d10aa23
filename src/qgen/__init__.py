"""qgen: how quantization-aware training changes generalization.

The study's steps are sub-packages: ``data`` (datasets and the in-memory loader),
``models`` (NiN, ResNet, VGG, ViT), ``quant`` (LSQ), ``train`` (the training protocol and
run directories), ``sweep`` (grids of runs), ``measures`` (generalization measures).
Specs live in :mod:`qgen.config`.
"""

__version__ = "0.1.0"
