"""keras.applications: ResNet50 (also as resnet50.ResNet50 and resnet.ResNet50)."""
from . import resnet, resnet50  # noqa: F401
from .resnet50 import ResNet50  # noqa: F401
