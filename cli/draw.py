"""`dltrain draw NET OUT`: a picture of a net, Caffe's python/draw_net.py.

    dltrain draw NET OUT.(png|svg|dot|...) [--rankdir LR|TB|BT|RL] [--phase TRAIN|TEST|ALL] [--display_lrm]

NET is a prototxt, YAML or binary net (old V0/V1 nets are upgraded as
dltrain loads them).  The format is OUT's extension: ``.dot`` is the graph's
text and needs nothing more; PNG, SVG and other images are made by
Graphviz's ``dot`` program.  The drawing itself is :mod:`dltrain_caffe.draw`
(``caffe.draw``), the same code pycaffe scripts call.
"""
from dlcore import TEST, TRAIN

__all__ = ["register", "cmd_draw"]

PHASES = {"TRAIN": TRAIN, "TEST": TEST, "ALL": None}       # ALL: every layer


def cmd_draw(args):
    from dlcore.config import load_net
    from dlcore.upgrade import upgraded_net
    from dltrain_caffe import draw
    net = upgraded_net(load_net(args.net), args.net)
    print(f"Drawing net to {args.out}")          # Caffe's draw_net.py line, on stdout
    draw.draw_net_to_file(net, args.out, args.rankdir, PHASES[args.phase], args.display_lrm)
    return 0


def register(sub):
    p = sub.add_parser("draw", help="draw a net as a picture (PNG, SVG, ... or Graphviz .dot text)",
                       description="Draw a net as Caffe's draw_net.py does: layers as boxes coloured by kind, "
                                   "blobs as octagons, in-place layers in green.  The format is OUT's extension; "
                                   "images need Graphviz's dot program, .dot files do not.")
    p.add_argument("net", help="the net (.prototxt, .yaml or binary)")
    p.add_argument("out", help="the picture to write: .png, .svg, .pdf, ... or .dot")
    p.add_argument("--rankdir", choices=("LR", "TB", "BT", "RL"), default="LR",
                   help="the direction the net runs in: LR (left to right, the default), TB, BT or RL")
    p.add_argument("--phase", choices=tuple(PHASES), default="ALL", type=str.upper,
                   help="draw only the layers of the TRAIN or TEST phase (default ALL: every layer)")
    p.add_argument("--display_lrm", "--display-lrm", action="store_true",
                   help="show the learning-rate multipliers of convolution and inner product layers")
    p.set_defaults(func=cmd_draw)
