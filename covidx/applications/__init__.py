"""Model constructors with Keras's names: covidx.applications.resnet50.ResNet50."""
from . import resnet50  # noqa: F401
from .resnet50 import ResNet50  # noqa: F401
