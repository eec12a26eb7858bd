"""HDF5Data: batches of rows from HDF5 files, as Caffe's hdf5_data_layer.cpp.

``hdf5_data_param``: ``source`` (a text file listing .h5 files, separated by
whitespace, normally one per line), ``batch_size``, ``shuffle`` (default
false).  Each top reads the dataset of the same name from every file: top
``label`` comes from dataset ``/label``.  The datasets of one file must all
have the same number of rows (first dimension); a top's shape is
(batch_size,) + the dataset's other dimensions, which must be the same in
every file.

Caffe compatibility
-------------------
* Values are converted to the net's dtype (float32) whatever their stored
  type (integers and floats are accepted, as Caffe's HDF5 reader accepts
  both classes; strings and compound types are refused).
* A file is read whole into memory when its turn comes (as Caffe does);
  the rows are handed out in order, then the next file is read.  After the
  last row of the last file the layer starts again at the first (a file
  list of one file is read once and kept).
* With ``shuffle: true`` the order of the files is shuffled at setup and
  each time the list is done, and the order of a file's rows each time the
  file is loaded and each time its rows are done (Caffe's
  ``file_permutation_`` and ``data_permutation_``).  The draws come from
  dltrain's RNG, so a run with ``random_seed`` set repeats.
* No ``transform_param`` (an error, as in Caffe: HDF5 data is generic).
* A relative file name in the list is taken relative to the working
  directory, as Caffe does; when no such file exists there, dltrain also
  tries it relative to the folder of the list file (so a data folder can
  be moved whole).

h5py is an optional dependency (``pip install dltrain[hdf5]``): it is
imported when an HDF5Data layer is set up, with a clear error if missing.
"""
import os

import numpy as np

from dlcore import log, parallel
from dlcore.errors import ConfigError, DLTrainError, require_module
from dlcore.layer import TRAIN, Layer
from dlcore.registry import register_layer
from dlcore.rng import get_rng

from .data import read_list_file

__all__ = ["HDF5DataLayer", "read_source_list"]


def import_h5py(layer_type):
    """h5py, or an error saying that the ``layer_type`` layer needs it (HDF5Data, HDF5Output)."""
    return require_module("h5py", f"the {layer_type} layer", "the h5py package", "hdf5")


def read_source_list(source, owner="HDF5Data"):
    """The .h5 file names listed in ``source`` (whitespace-separated), resolved."""
    names = " ".join(read_list_file(source, owner, "hdf5_data_param.source", "HDF5 files")).split()
    base = os.path.dirname(os.path.abspath(source))
    resolved = []
    for name in names:
        if not os.path.isabs(name) and not os.path.exists(name) and os.path.exists(os.path.join(base, name)):
            name = os.path.join(base, name)
        resolved.append(name)
    return resolved


@register_layer("HDF5Data")
class HDF5DataLayer(Layer):
    exact_num_bottom_blobs = 0
    min_top_blobs = 1

    def setup(self, bottom, top):
        p = self.layer_param.hdf5_data_param
        self.owner = f"layer '{self.name}' (HDF5Data)"
        if self.layer_param.HasField("transform_param"):
            raise ConfigError(f"{self.owner} does not transform data: remove transform_param",
                              field="transform_param")
        if p.batch_size <= 0:
            raise ConfigError(f"{self.owner}: hdf5_data_param.batch_size must be positive",
                              field="hdf5_data_param.batch_size")
        self.batch_size = int(p.batch_size)
        self.shuffle = bool(p.shuffle)
        self.source = p.source
        self.dataset_names = list(self.layer_param.top)
        if len(self.dataset_names) < len(top):          # anonymous tops cannot name a dataset
            raise ConfigError(f"{self.owner}: every top must be named after an HDF5 dataset")
        import_h5py("HDF5Data")
        log.info(f"Loading list of HDF5 filenames from: {p.source}")
        self.files = read_source_list(p.source, self.owner)
        log.info(f"Number of HDF5 files: {len(self.files)}")
        self.file_order = self._shuffled(np.arange(len(self.files)))
        self.current_file = 0
        self.arrays = None
        self._load(self.files[self.file_order[0]])
        self.current_row = 0
        for blob, array in zip(top, self.arrays):
            blob.reshape((self.batch_size,) + array.shape[1:])
        self.row_shapes = [a.shape[1:] for a in self.arrays]
        offset, self.stride = parallel.data_share(self.phase == TRAIN)     # a data-parallel run's share
        for _ in range(offset):
            self._next()

    def _shuffled(self, order):
        """``order`` shuffled by dltrain's generator when ``shuffle`` is set: a new array (resume_state hands
        out references, so nothing is shuffled in place)."""
        if not self.shuffle:
            return order
        order = order.copy()
        get_rng().shuffle(order)
        return order

    def _load(self, path, permutation=None):
        """Read ``path``'s datasets; its row order is ``permutation`` if given, else a new one."""
        h5py = import_h5py("HDF5Data")
        arrays = []
        try:
            with h5py.File(path, "r") as f:
                for name in self.dataset_names:
                    if name not in f:
                        raise DLTrainError(f"{self.owner}: HDF5 file '{path}' has no dataset '{name}' "
                                           f"(the tops are read from the datasets of the same names; it has: "
                                           f"{', '.join(sorted(f.keys())) or 'none'})")
                    dataset = f[name]
                    if not isinstance(dataset, h5py.Dataset):
                        raise DLTrainError(f"{self.owner}: '{name}' in HDF5 file '{path}' is not a dataset")
                    if dataset.dtype.kind not in "fiub":
                        raise DLTrainError(f"{self.owner}: dataset '{name}' in HDF5 file '{path}' holds "
                                           f"{dataset.dtype} values; only integer and floating-point data "
                                           "can be read")
                    if dataset.ndim < 1:
                        raise DLTrainError(f"{self.owner}: dataset '{name}' in HDF5 file '{path}' must have "
                                           "at least 1 axis")
                    arrays.append(np.ascontiguousarray(dataset[()], dtype=self.dtype))
        except OSError as err:
            raise DLTrainError(f"{self.owner}: cannot read HDF5 file '{path}': {err}") from None
        rows = arrays[0].shape[0]
        for name, array in zip(self.dataset_names, arrays):
            if array.shape[0] != rows:
                raise DLTrainError(f"{self.owner}: the datasets of HDF5 file '{path}' differ in their number of "
                                   f"rows: '{self.dataset_names[0]}' has {rows}, '{name}' has {array.shape[0]}")
        if rows == 0:
            raise DLTrainError(f"{self.owner}: the datasets of HDF5 file '{path}' have no rows")
        if self.arrays is not None:
            for name, array, shape in zip(self.dataset_names, arrays, self.row_shapes):
                if array.shape[1:] != shape:
                    raise DLTrainError(f"{self.owner}: dataset '{name}' in HDF5 file '{path}' has rows of shape "
                                       f"{array.shape[1:]}, the first file's have {shape}")
        if permutation is not None and len(permutation) != rows:
            raise DLTrainError(f"{self.owner}: HDF5 file '{path}' has {rows} rows; the solver state's row order "
                               f"has {len(permutation)}")
        self.arrays = arrays
        self.path = path
        self.permutation = self._shuffled(np.arange(rows)) if permutation is None else permutation
        log.info(f"Successfully loaded {rows} rows from {path}" + (" (shuffled)" if self.shuffle else ""))

    def _next(self):
        """Caffe's HDF5DataLayer::Next: advance one row, wrapping to the next file."""
        self.current_row += 1
        if self.current_row == self.arrays[0].shape[0]:
            if len(self.files) > 1:
                self.current_file += 1
                if self.current_file == len(self.files):
                    self.current_file = 0
                    self.file_order = self._shuffled(self.file_order)
                self._load(self.files[self.file_order[self.current_file]])
            self.current_row = 0
            self.permutation = self._shuffled(self.permutation)

    def reshape(self, bottom, top):
        pass   # shaped in setup

    # --- exact resume (dlcore.resume; the shuffles draw from the global generator, restored with it) --------
    def resume_state(self):
        """The file, the row, and the file and row orders."""
        return {"files": len(self.files), "file_order": self.file_order, "current_file": self.current_file,
                "current_row": self.current_row, "permutation": self.permutation}

    def restore_resume_state(self, state):
        if int(state["files"]) != len(self.files):
            raise ValueError(f"it was written for a list of {state['files']} HDF5 files; '{self.source}' "
                             f"lists {len(self.files)}")
        file_order = np.asarray(state["file_order"], np.int64)
        if not np.array_equal(np.sort(file_order), np.arange(len(self.files))):
            raise ValueError("its file order is not a permutation of the list")
        current_file = int(state["current_file"])
        if not 0 <= current_file < len(self.files):
            raise ValueError(f"file index {current_file} is out of range")
        permutation = np.asarray(state["permutation"], np.int64)
        self.file_order, self.current_file = file_order, current_file
        path = self.files[file_order[current_file]]
        if path != self.path or len(permutation) != self.arrays[0].shape[0]:
            self._load(path, permutation)
        if not np.array_equal(np.sort(permutation), np.arange(self.arrays[0].shape[0])):
            raise ValueError("its row order is not a permutation of the file's rows")
        self.permutation = permutation
        row = int(state["current_row"])
        if not 0 <= row < self.arrays[0].shape[0]:
            raise ValueError(f"row {row} is out of range")
        self.current_row = row

    def forward_cpu(self, bottom, top):
        if self.stride > 1:
            for item in range(self.batch_size):
                row = self.permutation[self.current_row]
                for blob, array in zip(top, self.arrays):
                    blob.data[item] = array[row]
                for _ in range(self.stride):
                    self._next()
            return
        filled = 0
        while filled < self.batch_size:
            # Copy the rows up to the end of this file (or of the batch) at once.
            count = min(self.batch_size - filled, self.arrays[0].shape[0] - self.current_row)
            rows = self.permutation[self.current_row:self.current_row + count]
            for blob, array in zip(top, self.arrays):
                blob.data[filled:filled + count] = array[rows]
            filled += count
            self.current_row += count - 1
            self._next()

    def backward_cpu(self, top, propagate_down, bottom):
        pass
