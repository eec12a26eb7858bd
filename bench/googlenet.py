"""GoogLeNet forward+backward (batch 10, 3x224x224): dltrain vs PyTorch CPU, in one run.

    python bench/googlenet.py [--batch 10] [--iterations 2] [--rounds 5] [--threads 2]

configs/zoo/googlenet_deploy.prototxt, TEST phase, force_backward, a fixed
random diff on ``prob``; the same net in PyTorch with the same weights (see
bench/vision_nets.py).  Prints the medians of interleaved rounds, the
ratios (forward+backward and forward alone), dltrain's per-layer split and
each convolution's GFLOP/s against the measured GEMM peak.
Needs torch (`pip install torch==2.13.0`), used here as the reference only.
"""
from vision_nets import main

if __name__ == "__main__":
    main("googlenet", "GoogLeNet forward+backward", __doc__, iterations=2, rounds=5)
