"""keras.optimizers: SGD, Adam and RMSprop with Keras 3's update formulas (the old lr= accepted)."""
from ..optimizers import SGD, Adam, Optimizer, RMSprop, get  # noqa: F401
