"""HDF5Output: writes its two bottoms to an HDF5 file, as Caffe's hdf5_output_layer.cpp.

``hdf5_output_param.file_name``: the file, created (truncated) when the
layer is set up.  Each forward writes bottom 0 to the dataset ``data`` and
bottom 1 to ``label``, in Caffe's 4-D layout (num, channels, height, width:
a bottom of fewer axes gets trailing 1s, as Caffe's legacy blob shape; more
than 4 axes is an error, as in Caffe), as 32-bit floats in a float32 net
(64-bit in a float64 one), exactly as Caffe's ``hdf5_save_nd_dataset``.
The file is what the HDF5Data layer (and Caffe's) reads back.

Caffe compatibility
-------------------
* After one forward the file holds the same datasets Caffe writes.  Caffe
  cannot write a second batch (its second ``H5LTmake_dataset`` on the same
  name fails and aborts the run); dltrain instead appends: after k forwards
  ``data`` and ``label`` hold the k batches one after the other (the rows of
  every batch must have the shape of the first).  The datasets are created
  resizable (chunked) for that; any HDF5 reader, Caffe's included, reads them
  like plain ones.
* The file is opened, extended and closed at each forward, so what has been
  written is on disk even if the run stops.
* No tops, no backward (Caffe's Backward does nothing).
* A GPU net copies the bottoms to the host (files are written from the host).

h5py is an optional dependency (``pip install h5py``): it is imported when
an HDF5Output layer is set up, with a clear error if missing.
"""
import os

import numpy as np

from dlcore import log
from dlcore.errors import ConfigError, DLTrainError
from dlcore.layer import Layer
from dlcore.registry import register_layer

from .hdf5_data import import_h5py

__all__ = ["HDF5OutputLayer", "DATA_DATASET", "LABEL_DATASET"]

DATA_DATASET = "data"     # Caffe's HDF5_DATA_DATASET_NAME
LABEL_DATASET = "label"   # Caffe's HDF5_DATA_LABEL_NAME


@register_layer("HDF5Output")
class HDF5OutputLayer(Layer):
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 0

    def setup(self, bottom, top):
        self.owner = f"layer '{self.name}' (HDF5Output)"
        self.file_name = self.layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise ConfigError(f"{self.owner}: hdf5_output_param.file_name is not set",
                              field="hdf5_output_param.file_name")
        h5py = import_h5py("HDF5Output")
        try:
            with h5py.File(self.file_name, "w"):
                pass
        except OSError as err:
            raise ConfigError(f"{self.owner}: failed to create HDF5 file '{self.file_name}': {err}",
                              field="hdf5_output_param.file_name") from None
        self.rows = 0
        self.row_shapes = None

    def reshape(self, bottom, top):
        pass

    def _legacy_shape(self, blob, index):
        if blob.num_axes > 4:
            raise DLTrainError(f"{self.owner}: bottom {index} has {blob.num_axes} axes ({blob.shape_string()}); "
                               "HDF5Output writes Caffe's num x channels x height x width blobs (at most 4 axes)")
        return (blob.num, blob.channels, blob.height, blob.width)

    def forward_cpu(self, bottom, top):
        shapes = [self._legacy_shape(b, i) for i, b in enumerate(bottom)]
        if shapes[0][0] != shapes[1][0]:
            raise DLTrainError(f"{self.owner}: data blob and label blob must have the same batch size, got "
                               f"{bottom[0].shape_string()} and {bottom[1].shape_string()}")
        rows = [s[1:] for s in shapes]
        if self.row_shapes is not None and rows != self.row_shapes:
            raise DLTrainError(f"{self.owner}: this batch's items are {rows[0]} (data) and {rows[1]} (label); the "
                               f"items already written to '{self.file_name}' are {self.row_shapes[0]} and "
                               f"{self.row_shapes[1]}")
        n = shapes[0][0]
        h5py = import_h5py("HDF5Output")
        log.info(f"Saving HDF5 file {self.file_name}")
        try:
            with h5py.File(self.file_name, "a") as f:
                for name, blob, shape in zip((DATA_DATASET, LABEL_DATASET), bottom, shapes):
                    values = np.ascontiguousarray(blob.cpu_data(), dtype=self.dtype).reshape(shape)
                    if self.rows == 0:
                        if name in f:
                            del f[name]
                        f.create_dataset(name, data=values, maxshape=(None,) + shape[1:], chunks=True)
                    else:
                        dataset = f[name]
                        dataset.resize(self.rows + n, axis=0)
                        dataset[self.rows:self.rows + n] = values
        except (OSError, KeyError) as err:
            raise DLTrainError(f"{self.owner}: cannot write HDF5 file '{self.file_name}': {err}") from None
        self.rows += n
        self.row_shapes = rows
        log.info(f"Successfully saved {n} rows")

    def backward_cpu(self, top, propagate_down, bottom):
        pass

    @property
    def path(self):
        return os.path.abspath(self.file_name)
