"""keras.callbacks: the training callbacks covidx's fit() supports."""
from ..callbacks import (Callback, EarlyStopping, History, LambdaCallback, ModelCheckpoint,  # noqa: F401
                         ProgbarLogger, ReduceLROnPlateau, TerminateOnNaN)
