"""Prototxt text: every syntax Caffe's reader takes, and errors that locate problems."""
import math
import pathlib

import pytest

from symnet.formats.proto import caffe_pb2
from symnet.formats.prototxt import (PrototxtError, parse_net, parse_solver, parse_text,
                                     to_text)
from symnet.errors import SymnetError


def test_comments_and_both_quote_styles():
    net = parse_net("""
        # a comment line
        name: 'single'  # trailing comment
        layer { name: "double" type: 'ReLU' bottom: "a" top: 'a' }  # another
    """)
    assert net.name == "single"
    assert net.layer[0].name == "double" and net.layer[0].type == "ReLU"


def test_string_escapes_and_concatenation():
    net = parse_net(r'''name: "a\"b\'c\\d\n\t\x41\101" layer { name: "x" 'y' "z" }''')
    assert net.name == "a\"b'c\\d\n\tAA"
    assert net.layer[0].name == "xyz"
    pn = parse_net(r"""layer { python_param { param_str: '{"k": [1, 2]}' } }""")
    assert pn.layer[0].python_param.param_str == '{"k": [1, 2]}'


def test_utf8_strings():
    net = parse_net('name: "réseau ネット"'.encode("utf-8"))
    assert net.name == "réseau ネット"
    assert parse_net(b"\xef\xbb\xbfname: 'bom'").name == "bom"


def test_enums_by_name_and_number():
    net = parse_net("""
        layer { pooling_param { pool: AVE } }
        layer { pooling_param { pool: 2 } }
        layer { include { phase: TRAIN } exclude { phase: 1 } }
    """)
    pp = caffe_pb2.PoolingParameter
    assert net.layer[0].pooling_param.pool == pp.AVE
    assert net.layer[1].pooling_param.pool == pp.STOCHASTIC
    assert net.layer[2].include[0].phase == caffe_pb2.TRAIN
    assert net.layer[2].exclude[0].phase == caffe_pb2.TEST


def test_repeated_fields_both_forms():
    net = parse_net("""
        layer { bottom: "a" bottom: "b" bottom: ["c", 'd'] top: [] loss_weight: [1, 0.5] }
        layer { convolution_param { kernel_size: 3 kernel_size: [5, 7] } }
        layer { param { lr_mult: 1 } param: [{ lr_mult: 2 }, < lr_mult: 3 >] }
    """)
    assert list(net.layer[0].bottom) == ["a", "b", "c", "d"]
    assert list(net.layer[0].loss_weight) == [1.0, 0.5]
    assert list(net.layer[1].convolution_param.kernel_size) == [3, 5, 7]
    assert [p.lr_mult for p in net.layer[2].param] == [1, 2, 3]


def test_optional_colon_before_message_and_angle_brackets():
    a = parse_net('layer { name: "x" convolution_param { num_output: 3 } }')
    b = parse_net('layer: { name: "x" convolution_param: { num_output: 3 } }')
    c = parse_net('layer < name: "x" convolution_param < num_output: 3 > >')
    assert a == b == c


def test_separators():
    net = parse_net('layer { name: "a", type: "ReLU"; bottom: "x" };')
    assert net.layer[0].type == "ReLU" and net.layer[0].bottom == ["x"]


def test_whitespace_forms():
    net = parse_net("name:\t'x'\r\nlayer{name:\"y\"}\n\n\f")
    assert net.name == "x" and net.layer[0].name == "y"


@pytest.mark.parametrize("text,value", [
    ("num_output: 10", 10), ("num_output: 0x1F", 31), ("num_output: 0X1f", 31),
    ("num_output: 017", 15), ("num_output: 0", 0), ("num_output: 4294967295", 2**32 - 1),
])
def test_integer_forms(text, value):
    net = parse_net(f"layer {{ convolution_param {{ {text} }} }}")
    assert net.layer[0].convolution_param.num_output == value


@pytest.mark.parametrize("text,value", [
    ("0.5", 0.5), ("-2", -2.0), ("1e-3", 1e-3), ("1E+2", 100.0), (".25", 0.25),
    ("2.5f", 2.5), ("5.", 5.0), ("inf", math.inf), ("-inf", -math.inf),
    ("infinity", math.inf), ("-Infinity", -math.inf), ("1e39", math.inf),
])
def test_float_forms(text, value):
    net = parse_net(f"layer {{ relu_param {{ negative_slope: {text} }} }}")
    got = net.layer[0].relu_param.negative_slope
    assert got == pytest.approx(value) if math.isfinite(value) else got == value


def test_nan():
    net = parse_net("layer { relu_param { negative_slope: nan } }")
    assert math.isnan(net.layer[0].relu_param.negative_slope)


@pytest.mark.parametrize("text,value", [("true", True), ("True", True), ("t", True),
                                        ("1", True), ("false", False), ("0", False),
                                        ("False", False), ("f", False)])
def test_bool_forms(text, value):
    net = parse_net(f"force_backward: {text}")
    assert net.force_backward is value


def test_signed_and_64_bit_fields():
    net = parse_net("input: 'data' input_dim: -1 input_dim: 3 input_shape { dim: -1 "
                    "dim: 9223372036854775807 }")
    assert list(net.input_dim) == [-1, 3]
    assert list(net.input_shape[0].dim) == [-1, 2**63 - 1]


def test_path_text_and_bytes_forms(tmp_path):
    text = 'name: "n" layer { name: "l" }'
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    expected = parse_net(text)
    assert parse_net(str(path)) == expected
    assert parse_net(path) == expected
    assert parse_net(text.encode()) == expected
    assert parse_net("") == caffe_pb2.NetParameter()


def test_solver_forms():
    solver = parse_solver("""
        net: "train_val.prototxt"
        test_net: "a.prototxt" test_net: "b.prototxt"
        test_iter: [10, 20]
        train_net_param { name: "inline" layer { name: "x" type: "Input" } }
        test_net_param { name: "t" }
        test_state { stage: "s" }
        base_lr: 0.01 lr_policy: "step" stepsize: 100 solver_mode: CPU
        solver_type: NESTEROV weights: "a.caffemodel"
    """)
    assert solver.net == "train_val.prototxt"
    assert list(solver.test_net) == ["a.prototxt", "b.prototxt"]
    assert list(solver.test_iter) == [10, 20]
    assert solver.train_net_param.layer[0].type == "Input"
    assert solver.solver_mode == caffe_pb2.SolverParameter.CPU
    assert solver.solver_type == caffe_pb2.SolverParameter.NESTEROV


def test_parse_text_any_message():
    blob = parse_text("shape { dim: 2 dim: 3 } data: [1, 2, 3, 4, 5, 6]",
                      caffe_pb2.BlobProto)
    assert list(blob.shape.dim) == [2, 3]


def test_to_text_round_trip():
    src = pathlib.Path(__file__).parents[1] / "data/models/bvlc_googlenet/deploy.prototxt"
    net = parse_net(src)
    again = parse_net(to_text(net))
    assert again == net
    assert to_text(parse_net('name: "x"')) == 'name: "x"\n'


# ----------------------------------------------------------------------------- errors

def error_of(text, **kw):
    with pytest.raises(PrototxtError) as info:
        parse_net(text, filename="net.prototxt", **kw)
    return info.value


def test_error_is_a_symnet_error():
    err = error_of("layer {")
    assert isinstance(err, SymnetError) and isinstance(err, ValueError)


def test_unknown_field_names_layer_and_suggests():
    err = error_of('layer {\n  name: "conv1"\n  type: "Convolution"\n  botom: "data"\n}')
    msg = str(err)
    assert msg.startswith("net.prototxt:4:3:")
    assert (err.filename, err.line, err.column) == ("net.prototxt", 4, 3)
    assert '"botom"' in msg and 'layer "conv1"' in msg and 'did you mean "bottom"' in msg


def test_unknown_field_name_given_after_the_error():
    err = error_of('layer {\n  nme: "x"\n  name: "relu7"\n}')
    assert 'layer "relu7"' in str(err) and 'did you mean "name"' in str(err)


def test_unknown_field_in_unnamed_layer_gives_index_and_type():
    err = error_of('layer { name: "a" }\nlayer { type: "Pooling"\n  pooling_parm { } }')
    msg = str(err)
    assert "layer #2" in msg and '"Pooling"' in msg
    assert 'did you mean "pooling_param"' in msg
    assert err.line == 3


def test_unknown_field_nested_in_param_block():
    err = error_of('layer {\n name: "fc6"\n inner_product_param {\n  num_ouput: 10\n }\n}')
    msg = str(err)
    assert err.line == 4 and err.column == 3
    assert "inner_product_param" in msg and 'layer "fc6"' in msg
    assert 'did you mean "num_output"' in msg


def test_parameter_outside_its_block_names_the_block():
    err = error_of('layer { name: "c" type: "Convolution" kernel_size: 3 }')
    assert "convolution_param" in str(err)


def test_unknown_field_in_v1_layers():
    err = error_of('layers {\n  name: "conv1"\n  type: CONVOLUTION\n  blob_lr: 1\n}')
    assert 'layers "conv1"' in str(err) and 'did you mean "blobs_lr"' in str(err)


def test_unknown_field_at_top_level():
    err = error_of('name: "x"\nlayr { }')
    assert err.line == 2 and 'did you mean "layer"' in str(err)


def test_unknown_field_in_inline_solver_net():
    with pytest.raises(PrototxtError) as info:
        parse_solver('base_lr: 0.1\nnet_param {\n layer {\n  name: "ip"\n  tpye: "X"\n'
                     ' }\n}', filename="solver.prototxt")
    msg = str(info.value)
    assert msg.startswith("solver.prototxt:5:3:")
    assert 'layer "ip"' in msg and 'did you mean "type"' in msg


def test_missing_closing_brace_at_end_of_file():
    err = error_of('name: "x"\nlayer {\n  name: "a"\n  convolution_param {\n    num_output: 1\n')
    msg = str(err)
    assert "end of the file" in msg and 'expected "}"' in msg
    assert "convolution_param" in msg and "line 4" in msg


def test_found_and_expected_for_a_wrong_token():
    err = error_of('layer }')
    assert "found '}'" in str(err) and 'expected "{"' in str(err)
    err = error_of('layer { name: conv1 }')
    assert '"conv1"' in str(err) and "expected a quoted string" in str(err)
    err = error_of('layer { name: "a" } }')
    assert "found '}'" in str(err) and "expected a field name" in str(err)


def test_bad_enum_suggests_value():
    err = error_of('layer {\n  pooling_param { pool: MAXX }\n}')
    msg = str(err)
    assert err.line == 2 and '"MAXX"' in msg and "MAX, AVE, STOCHASTIC" in msg
    assert "did you mean MAX" in msg
    err = error_of("layer { pooling_param { pool: 9 } }")
    assert "PoolMethod" in str(err)


def test_number_errors():
    err = error_of("layer { convolution_param { num_output: -1 } }")
    assert "[0, 4294967295]" in str(err) and "num_output" in str(err)
    err = error_of("layer { convolution_param { num_output: 99999999999 } }")
    assert "uint32" in str(err)
    err = error_of("input_dim: 2147483648")
    assert "int32" in str(err)
    err = error_of("input_dim: 1.5")
    assert "expected an integer" in str(err)
    err = error_of("layer { relu_param { negative_slope: fast } }")
    assert "expected a number" in str(err)
    err = error_of("force_backward: yes")
    assert "true or false" in str(err)


def test_duplicate_scalar_field():
    err = error_of('layer {\n  name: "a"\n  name: "b"\n}')
    assert err.line == 3 and 'second "name"' in str(err)


def test_unterminated_string():
    err = error_of('layer {\n  name: "abc\n}')
    assert err.line == 2 and "closing quote" in str(err)


def test_error_shows_source_line_and_caret():
    err = error_of('layer {\n  nmae: "x"\n}')
    lines = str(err).split("\n")
    assert lines[1].strip() == 'nmae: "x"'
    assert lines[2].index("^") == lines[1].index("n")


def test_invalid_utf8_names_position():
    with pytest.raises(PrototxtError) as info:
        parse_net(b'name: "ok"\nlayer { name: "\xff" }', filename="bin.prototxt")
    err = info.value
    assert (err.line, err.column) == (2, 16) and "UTF-8" in str(err)


def test_missing_file():
    with pytest.raises(PrototxtError, match="no such file"):
        parse_net("/nonexistent/deploy.prototxt")


def test_extension_syntax_rejected():
    assert "field name" in str(error_of("layer { [caffe.x]: 1 }"))
