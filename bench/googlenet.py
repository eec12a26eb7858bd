"""GoogLeNet forward+backward (batch 10, 3x224x224): dltrain vs PyTorch CPU, in one run.

    python bench/googlenet.py [--batch 10] [--iterations 2] [--rounds 5] [--threads 2]

The net is configs/zoo/googlenet_deploy.prototxt; what is run and printed is described in
bench/vision_nets.py.  Needs torch (`pip install torch==2.13.0`), used here as the reference only.
"""
from vision_nets import main

if __name__ == "__main__":
    main("googlenet", "GoogLeNet forward+backward", __doc__, iterations=2, rounds=5)
