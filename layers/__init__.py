"""The layer catalog: one module per family; importing this package registers them all."""
from . import (accuracy, convolution, data, inner_product, losses, neurons,  # noqa: F401
               pooling, softmax, structural)
from . import db_data  # noqa: F401  (Data: LMDB of Datum records)
