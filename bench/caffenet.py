"""CaffeNet forward+backward (batch 10, 3x227x227): dltrain vs PyTorch CPU, in one run.

    python bench/caffenet.py [--batch 10] [--iterations 3] [--rounds 5] [--threads 2]

The net is configs/zoo/caffenet_deploy.prototxt; what is run and printed is described in
bench/vision_nets.py.  Needs torch (`pip install torch==2.13.0`), used here as the reference only.
"""
from vision_nets import main

if __name__ == "__main__":
    main("caffenet", "CaffeNet forward+backward", __doc__, iterations=3, rounds=5)
