"""keras.metrics."""
from ..metrics import (AUC, Accuracy, BinaryAccuracy, CategoricalAccuracy, Mean, Metric, Precision,  # noqa: F401
                       Recall, SparseCategoricalAccuracy, binary_accuracy, categorical_accuracy, get,
                       sparse_categorical_accuracy)
