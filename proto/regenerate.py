"""Regenerate proto/caffe_pb2.py from proto/caffe.proto.

Usage (from anywhere):

    python proto/regenerate.py            # writes proto/caffe_pb2.py
    python proto/regenerate.py --out DIR  # writes DIR/caffe_pb2.py instead

It runs the protobuf compiler bundled with grpcio-tools
(``python -m grpc_tools.protoc -I proto --python_out=... caffe.proto``), so
no system ``protoc`` is needed. The generated module is committed; the test
suite (tests/test_proto.py) checks that it is up to date. The protobuf
runtime version that the generated code requires is recorded in
proto/REQUIREMENTS-NOTE.txt.
"""

import argparse
import os
import subprocess
import sys

PROTO_DIR = os.path.dirname(os.path.abspath(__file__))
PROTO_FILE = "caffe.proto"


def regenerate(out_dir=PROTO_DIR):
    """Compile caffe.proto into ``out_dir``/caffe_pb2.py; return its path."""
    os.makedirs(out_dir, exist_ok=True)
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        "-I", PROTO_DIR,
        "--python_out=" + os.path.abspath(out_dir),
        os.path.join(PROTO_DIR, PROTO_FILE),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError("protoc failed:\n" + result.stdout + result.stderr)
    return os.path.join(out_dir, "caffe_pb2.py")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=PROTO_DIR,
                        help="output folder (default: proto/)")
    args = parser.parse_args(argv)
    path = regenerate(args.out)
    print("wrote", path)


if __name__ == "__main__":
    main()
