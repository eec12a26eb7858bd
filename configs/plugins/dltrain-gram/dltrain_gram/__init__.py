"""dltrain-gram: the Gram-matrix layer of style transfer, as a dltrain plugin.

Importing :mod:`dltrain_gram.gram` registers the layer type "Gram"; dltrain
does that itself through the package's ``dltrain.layers`` entry point.
"""
__version__ = "0.1.0"
