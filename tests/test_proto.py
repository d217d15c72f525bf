"""The prototxt reader: syntax, schema checks, and every error kind."""
import pytest

from layerasync import proto, schema
from layerasync.proto import ProtoError


def net(text):
    return proto.parse(text, schema.NetParameter, 'net.prototxt')


def error_of(text, sch=schema.NetParameter):
    with pytest.raises(ProtoError) as e:
        proto.parse(text, sch, 'net.prototxt')
    return str(e.value)


def test_nested_messages_both_forms_and_repeated_fields():
    p = net('''
        name: "n"   # a comment
        layer { name: 'a' type: "Input" top: "x" top: "y"
                input_param: { shape { dim: 2 dim: 3 } } }
        layer < name: "b" type: "ReLU" bottom: "x" top: "x" >
    ''')
    assert p.name == 'n'
    assert [l.name for l in p.layer] == ['a', 'b']
    assert p.layer[0].top == ['x', 'y']
    assert p.layer[0].input_param.shape[0].dim == [2, 3]


def test_scalars_numbers_bools_enums_and_strings():
    s = proto.parse('''
        base_lr: 1e-4 momentum: .9 weight_decay: -.5 gamma: 5 max_iter: 0x10
        test_initialization: false snapshot_diff: True solver_mode: CPU
        snapshot_prefix: "a\\tb" 'c' delta: inf
    ''', schema.SolverParameter)
    assert s.base_lr == 1e-4 and s.momentum == 0.9 and s.weight_decay == -0.5
    assert s.gamma == 5.0 and isinstance(s.gamma, float)
    assert s.max_iter == 16
    assert s.test_initialization is False and s.snapshot_diff is True
    assert s.solver_mode == 'CPU'
    assert s.snapshot_prefix == 'a\tbc'
    assert s.delta == float('inf')


def test_list_syntax_and_separators():
    p = net('layer { name: "c" type: "Convolution" convolution_param { kernel_size: [3, 5]; pad: 1, } }')
    assert p.layer[0].convolution_param.kernel_size == [3, 5]
    assert p.layer[0].convolution_param.pad == [1]


def test_defaults_of_unset_fields():
    p = net('layer { name: "p" type: "Pooling" }')
    pp = p.layer[0].pooling_param
    assert pp.pool == 'MAX' and pp.stride == 1 and pp.pad == 0 and pp.kernel_size is None
    assert not p.layer[0].has('pooling_param')
    assert p.layer[0].convolution_param.weight_filler.type == 'constant'
    assert p.layer[0].bottom == []


def test_locations_are_recorded():
    p = net('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n}\n')
    assert p.layer[0].where == 'net.prototxt:2:1'
    assert p.layer[0].where_of('type') == 'net.prototxt:4:3'


@pytest.mark.parametrize('text, expected', [
    ('layer { name: "a" typo: "x" }',
     "net.prototxt:1:19: unknown field 'typo' in LayerParameter; known fields: accuracy_param"),
    ('layer { name: "a" }\nfoo: 1', "net.prototxt:2:1: unknown field 'foo' in NetParameter"),
    ('layer { name: "a" ', 'net.prototxt:1:19: expected a field name or \'}\', found end of file'),
    ('layer { name "a" }', "net.prototxt:1:14: expected ':' or '{' after field 'name', found '\"a\"'"),
    ('layer { name: }', "net.prototxt:1:15: expected a value for 'name', found '}'"),
    ('name: 3', "net.prototxt:1:7: field 'name' expects a quoted string, found '3'"),
    ('force_backward: maybe', "field 'force_backward' expects true or false, found 'maybe'"),
    ('layer { name: "a" pooling_param { pool: MEDIAN } }',
     "field 'pool' expects one of MAX, AVE, STOCHASTIC, found 'MEDIAN'"),
    ('layer { name: "a" convolution_param { num_output: 2.5 } }',
     "field 'num_output' expects an integer in [0, 4294967295] (uint32), found '2.5'"),
    ('layer { name: "a" name: "b" }', "field 'name' given twice (first at net.prototxt:1:9)"),
    ('layer: "x"', "field 'layer' is a message: write layer { ... }"),
    ('name { }', "field 'name' expects a quoted string, found a message"),
    ('name: "a\\q"', 'unknown escape \\q in string'),
    ('name: "abc', "unexpected character '\"'"),
    ('layer { name: "a" } }', "expected a field name, found '}'"),
    ('input_dim: [1 2]', "expected ',' or ']' in a list, found '2'"),
])
def test_errors_name_file_line_col_and_what_was_expected(text, expected):
    assert expected in error_of(text)


def test_unknown_field_lists_known_ones():
    msg = error_of('layer { name: "a" relu_param { slope: 1 } }')
    assert "unknown field 'slope' in ReLUParameter; known fields: engine, negative_slope" in msg


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(ProtoError, match='no such file'):
        proto.parse_file(tmp_path / 'missing.prototxt', schema.NetParameter)
    bad = tmp_path / 'bad.prototxt'
    bad.write_bytes(b'\xff\xfe\x00')
    with pytest.raises(ProtoError, match='not a text file'):
        proto.parse_file(bad, schema.NetParameter)


def test_parse_file_reports_its_path(tmp_path):
    f = tmp_path / 'm.prototxt'
    f.write_text('name: "m"\nlayer { nam: "x" }\n')
    with pytest.raises(ProtoError, match=r'm\.prototxt:2:9: unknown field'):
        proto.parse_file(f, schema.NetParameter)


def test_message_copy_is_independent():
    p = net('layer { name: "a" type: "ReLU" top: "x" }')
    q = p.layer[0].copy()
    q.top[0] = 'y'
    assert p.layer[0].top == ['x']
    with pytest.raises(AttributeError, match='LayerParameter has no field'):
        q.nonsense = 1
