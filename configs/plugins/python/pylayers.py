"""Caffe-style Python layers, as a Caffe user writes them (dltrain runs them unchanged).

- ``LinearDataLayer`` feeds batches from a Python generator: x ~ N(0, 1) and
  y = x . w + b + noise, with w and b given in param_str (YAML);
- ``EuclideanLossLayer`` is the loss of Caffe's examples/pycaffe/layers/pyloss.py
  (a Python loss layer needs ``loss_weight: 1`` in the net, as in Caffe).
"""
import numpy as np
import yaml

import caffe


class LinearDataLayer(caffe.Layer):
    def setup(self, bottom, top):
        params = yaml.safe_load(self.param_str)
        self.batch_size = int(params["batch_size"])
        self.w = np.asarray(params["w"], dtype=np.float32)
        self.b = float(params["b"])
        self.noise = float(params.get("noise", 0.0))
        self.batches = self.generate(int(params.get("seed", 1)))
        top[0].reshape(self.batch_size, len(self.w))
        top[1].reshape(self.batch_size, 1)

    def generate(self, seed):
        rng = np.random.RandomState(seed)
        while True:
            x = rng.randn(self.batch_size, len(self.w)).astype(np.float32)
            y = x.dot(self.w) + self.b + self.noise * rng.randn(self.batch_size)
            yield x, y[:, None]

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        top[0].data[...], top[1].data[...] = next(self.batches)

    def backward(self, top, propagate_down, bottom):
        pass


class EuclideanLossLayer(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num
