"""keras.preprocessing: image, and image_dataset_from_directory (tf.keras 2.x's place for it)."""
from . import image  # noqa: F401
from ...preprocessing.dataset import image_dataset_from_directory  # noqa: F401
