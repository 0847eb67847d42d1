"""pycaffe's ``caffe.draw``: a net's layers and blobs as a Graphviz graph.

    caffe.draw.draw_net_to_file(net_param, "net.png", rankdir="LR", phase=caffe.TEST)

The graph is made from the NetParameter alone (a prototxt path, a NetParameter or a
Net): no layer is built and no Python layer module is imported. ``.dot`` / ``.gv`` /
``.raw`` output is the DOT text itself; other formats are rendered by Graphviz's
``dot`` program. ``get_pydot_graph`` gives a ``pydot.Dot`` (pydot needed).
"""
from __future__ import annotations

import os
import shutil
import subprocess

from ..errors import SymnetError
from ..formats import prototxt, upgrade
from ..formats.proto import caffe_pb2
from ..net import layer_included

# node styles (Caffe's colours)
LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_TYPE_COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050",
                 "Pooling": "#FF9900", "InnerProduct": "#CC33FF"}
TEXT_FORMATS = ("dot", "gv", "raw")
INSTALL_DOT = ("install Graphviz (apt-get install graphviz, brew install graphviz, "
               "conda install graphviz)")


class GraphvizError(SymnetError, RuntimeError):
    """Rendering needs Graphviz's ``dot`` program (or pydot) that is not installed."""


def _net_param(net):
    if isinstance(net, (str, os.PathLike)):
        net = prototxt.parse_net(os.fspath(net))
    elif not isinstance(net, caffe_pb2.NetParameter):
        net = getattr(net, "param", None)
        if not isinstance(net, caffe_pb2.NetParameter):
            raise TypeError("caffe.draw: expected a NetParameter, a prototxt path or a Net")
    return upgrade.upgrade_net(net)[0]


def _phase_included(lp, phase):
    if phase is None:
        return True
    return layer_included(lp, phase, 0, ())


def get_layer_label(layer, rankdir="LR", display_lrm=False):
    """A layer's node text: name and type; kernel size, stride and pad of
    convolution, deconvolution and pooling layers; learning-rate multipliers with
    ``display_lrm``."""
    sep = " " if rankdir in ("TB", "BT") else "\n"
    label = f"{layer.name}{sep}({layer.type})"
    if layer.type in ("Convolution", "Deconvolution"):
        cp = layer.convolution_param
        k = cp.kernel_size[0] if len(cp.kernel_size) else cp.kernel_h or 1
        s = cp.stride[0] if len(cp.stride) else cp.stride_h or 1
        p = cp.pad[0] if len(cp.pad) else cp.pad_h
        label += f"{sep}kernel size: {k}{sep}stride: {s}{sep}pad: {p}"
    elif layer.type == "Pooling":
        pp = layer.pooling_param
        pool = pp.DESCRIPTOR.fields_by_name["pool"].enum_type.values_by_number[pp.pool].name
        k = pp.kernel_size or pp.kernel_h
        label += (f"{sep}pool: {pool}{sep}kernel size: {k}{sep}stride: "
                  f"{pp.stride or pp.stride_h or 1}{sep}pad: {pp.pad or pp.pad_h}")
    if display_lrm and len(layer.param):
        mults = ", ".join(f"{p.lr_mult:g}" for p in layer.param)
        label += f"{sep}lr mult: {mults}"
    return label


def get_edge_label(layer):
    """The label of a layer's edges to its tops: the batch size of data layers, the
    number of outputs of convolution and inner-product layers."""
    if layer.type == "Data" and layer.HasField("data_param"):
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return None


def _q(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(d):
    return "[" + ", ".join(f"{k}={_q(v)}" for k, v in d.items()) + "]"


def get_dot_source(caffe_net, rankdir="LR", label_edges=True, phase=None,
                   display_lrm=False):
    """The DOT text of the net's graph: a record node per layer (in-place neuron
    layers green), an octagon per blob, edges bottom -> layer -> top."""
    net = _net_param(caffe_net)
    nodes, edges = {}, []
    for layer in net.layer:
        if not _phase_included(layer, phase):
            continue
        node = f"{layer.name}_{layer.type}"
        in_place = (len(layer.bottom) == 1 and len(layer.top) == 1
                    and layer.bottom[0] == layer.top[0])
        style = dict(NEURON_LAYER_STYLE if in_place else LAYER_STYLE_DEFAULT)
        if not in_place:
            style["fillcolor"] = _TYPE_COLOURS.get(layer.type, style["fillcolor"])
        nodes[node] = dict(label=get_layer_label(layer, rankdir, display_lrm), **style)
        for b in layer.bottom:
            nodes.setdefault(f"{b}_blob", dict(label=b, **BLOB_STYLE))
            edges.append((f"{b}_blob", node, None))
        label = get_edge_label(layer) if label_edges else None
        for t in layer.top:
            nodes[f"{t}_blob"] = dict(label=t, **BLOB_STYLE)
            edges.append((node, f"{t}_blob", label))
    lines = [f"digraph {_q(net.name or 'Net')} {{", f"  rankdir={_q(rankdir)};"]
    lines += [f"  {_q(n)} {_attrs(a)};" for n, a in nodes.items()]
    for src, dst, label in edges:
        extra = f" [label={_q(label)}]" if label else ""
        lines.append(f"  {_q(src)} -> {_q(dst)}{extra};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def get_pydot_graph(caffe_net, rankdir="LR", label_edges=True, phase=None,
                    display_lrm=False):
    """The net's graph as a ``pydot.Dot`` (needs pydot: pip install pydot)."""
    try:
        import pydot
    except ImportError:
        raise GraphvizError("caffe.draw.get_pydot_graph needs the pydot package: pip "
                            "install pydot (or use get_dot_source / draw_net_to_file with a "
                            ".dot file)") from None
    graphs = pydot.graph_from_dot_data(get_dot_source(caffe_net, rankdir, label_edges,
                                                      phase, display_lrm))
    return graphs[0]


def render(source, ext):
    """DOT text rendered by Graphviz's ``dot`` as bytes of format ``ext``."""
    ext = ext.lower().lstrip(".")
    if ext in TEXT_FORMATS:
        return source.encode("utf-8")
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizError(f"caffe.draw: rendering .{ext} needs Graphviz's 'dot' program, "
                            f"which is not on PATH; {INSTALL_DOT}, or write a .dot file")
    out = subprocess.run([dot, f"-T{ext}"], input=source.encode("utf-8"),
                         capture_output=True, check=False)
    if out.returncode != 0:
        raise GraphvizError(f"caffe.draw: dot -T{ext} failed: "
                            f"{out.stderr.decode(errors='replace').strip()}")
    return out.stdout


def draw_net(caffe_net, rankdir="LR", ext="png", phase=None, display_lrm=False):
    """The drawing as bytes in format ``ext`` (png, svg, pdf, ...; dot for the text)."""
    return render(get_dot_source(caffe_net, rankdir, phase=phase, display_lrm=display_lrm),
                  ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Write the drawing to ``filename``; its extension is the format (``.dot``,
    ``.gv`` or ``.raw`` write the DOT text, which needs no Graphviz)."""
    filename = os.fspath(filename)
    ext = filename[filename.rfind(".") + 1:] if "." in os.path.basename(filename) else "png"
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with open(filename, "wb") as f:
        f.write(data)
