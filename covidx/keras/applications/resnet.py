"""keras.applications.resnet."""
from ...applications.resnet50 import ResNet50, preprocess_input  # noqa: F401
