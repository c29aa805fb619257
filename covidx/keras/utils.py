"""keras.utils: the image helpers, to_categorical, set_random_seed and image_dataset_from_directory
(an iterable of (images, labels) batches, not a tf.data.Dataset: there is no TensorFlow here)."""
from ..preprocessing.dataset import image_dataset_from_directory  # noqa: F401
from ..preprocessing.image import array_to_img, img_to_array, load_img, save_img  # noqa: F401
from ..utils import set_random_seed, to_categorical  # noqa: F401
