"""The layer catalog: one module per family; importing this package registers them all."""
from . import (accuracy, convolution, data, inner_product, losses, neurons,  # noqa: F401
               pooling, softmax, structural)
from . import db_data  # noqa: F401  (Data: LMDB of Datum records)
from . import embed, geoloc_loss  # noqa: F401  (Embed; GeolocLoss, a dltrain addition)
from . import hdf5_data  # noqa: F401  (HDF5Data; h5py is imported only when one is set up)
from . import recurrent  # noqa: F401  (LSTM, RNN)
from . import python_layer  # noqa: F401  (Python: Caffe's Python layers, pycaffe's interface)
