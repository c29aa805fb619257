"""keras.callbacks: the training callbacks covidx's fit() supports (TensorBoard records nothing: no
TensorFlow here)."""
from ..callbacks import (Callback, CSVLogger, EarlyStopping, History, LambdaCallback,  # noqa: F401
                         LearningRateScheduler, ModelCheckpoint, ProgbarLogger, ReduceLROnPlateau, TensorBoard,
                         TerminateOnNaN)
