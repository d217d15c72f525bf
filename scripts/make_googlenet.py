"""Write layerasync/models/googlenet.prototxt: BVLC GoogLeNet fed by Input layers.

Run from the repository root::

    python scripts/make_googlenet.py            # rewrites layerasync/models/googlenet.prototxt
    python scripts/make_googlenet.py -o -       # prints it instead

The layer structure, names, fillers and lr/decay multipliers are those of BVLC
Caffe's models/bvlc_googlenet/train_val.prototxt (Szegedy et al. 2014, Table 1):
the stem, inception modules 3a..5b, the two auxiliary classifiers loss1 (on 4a)
and loss2 (on 4d) with loss_weight 0.3, and the main classifier loss3. As in
BVLC, the auxiliary heads exist in both phases and the Accuracy layers only in
TEST. The Data layers are replaced by one Input layer (synthetic data) so the net
runs without ImageNet; the batch is set by ``--batch`` (default 16).
"""
import argparse
import os
import sys

# Inception modules: (name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
INCEPTION = [
    ('3a', 64, 96, 128, 16, 32, 32),
    ('3b', 128, 128, 192, 32, 96, 64),
    ('4a', 192, 96, 208, 16, 48, 64),
    ('4b', 160, 112, 224, 24, 64, 64),
    ('4c', 128, 128, 256, 24, 64, 64),
    ('4d', 112, 144, 288, 32, 64, 64),
    ('4e', 256, 160, 320, 32, 128, 128),
    ('5a', 256, 160, 320, 32, 128, 128),
    ('5b', 384, 192, 384, 48, 128, 128),
]
# Where the net downsamples between modules, and where the auxiliary heads hang.
POOL_AFTER = {'3b': 'pool3/3x3_s2', '4e': 'pool4/3x3_s2'}
AUX_AFTER = {'4a': 'loss1', '4d': 'loss2'}

WEIGHTED = '  param { lr_mult: 1 decay_mult: 1 }\n  param { lr_mult: 2 decay_mult: 0 }\n'
TEST_ONLY = '  include { phase: TEST }\n'


def layer(name, type_, bottoms, tops, body=''):
    lines = [f'layer {{\n  name: "{name}"\n  type: "{type_}"\n']
    lines += [f'  bottom: "{b}"\n' for b in bottoms]
    lines += [f'  top: "{t}"\n' for t in tops]
    return ''.join(lines) + body + '}\n'


def fillers(bias):
    return ('    weight_filler { type: "xavier" }\n'
            f'    bias_filler {{ type: "constant" value: {bias} }}\n')


def conv(name, bottom, num_output, kernel, stride=1, pad=0, bias=0.2):
    geometry = f'    num_output: {num_output}\n'
    if pad:
        geometry += f'    pad: {pad}\n'
    geometry += f'    kernel_size: {kernel}\n'
    if stride != 1:
        geometry += f'    stride: {stride}\n'
    body = WEIGHTED + '  convolution_param {\n' + geometry + fillers(bias) + '  }\n'
    return layer(name, 'Convolution', [bottom], [name], body)


def fc(name, bottom, num_output, bias):
    body = (WEIGHTED + f'  inner_product_param {{\n    num_output: {num_output}\n'
            + fillers(bias) + '  }\n')
    return layer(name, 'InnerProduct', [bottom], [name], body)


def relu(name, blob):
    return layer(name, 'ReLU', [blob], [blob])


def pool(name, bottom, kind, kernel, stride, pad=0):
    body = (f'  pooling_param {{\n    pool: {kind}\n'
            f'    kernel_size: {kernel}\n    stride: {stride}\n')
    if pad:
        body += f'    pad: {pad}\n'
    return layer(name, 'Pooling', [bottom], [name], body + '  }\n')


def lrn(name, bottom):
    body = '  lrn_param {\n    local_size: 5\n    alpha: 0.0001\n    beta: 0.75\n  }\n'
    return layer(name, 'LRN', [bottom], [name], body)


def dropout(name, blob, ratio):
    return layer(name, 'Dropout', [blob], [blob], f'  dropout_param {{ dropout_ratio: {ratio} }}\n')


def loss(name, bottom, top, weight):
    return layer(name, 'SoftmaxWithLoss', [bottom, 'label'], [top], f'  loss_weight: {weight}\n')


def accuracy(prefix, bottom):
    top5 = TEST_ONLY + '  accuracy_param { top_k: 5 }\n'
    return (layer(f'{prefix}/top-1', 'Accuracy', [bottom, 'label'], [f'{prefix}/top-1'], TEST_ONLY)
            + layer(f'{prefix}/top-5', 'Accuracy', [bottom, 'label'], [f'{prefix}/top-5'], top5))


def inception(bottom, name, n1, n3r, n3, n5r, n5, npool):
    p = f'inception_{name}'
    def branch(name, source, num_output, kernel, pad=0):
        return conv(f'{p}/{name}', source, num_output, kernel, pad=pad) + \
            relu(f'{p}/relu_{name}', f'{p}/{name}')
    out = branch('1x1', bottom, n1, 1)
    out += branch('3x3_reduce', bottom, n3r, 1) + branch('3x3', f'{p}/3x3_reduce', n3, 3, pad=1)
    out += branch('5x5_reduce', bottom, n5r, 1) + branch('5x5', f'{p}/5x5_reduce', n5, 5, pad=2)
    out += pool(f'{p}/pool', bottom, 'MAX', 3, 1, pad=1)
    out += branch('pool_proj', f'{p}/pool', npool, 1)
    out += layer(f'{p}/output', 'Concat',
                 [f'{p}/1x1', f'{p}/3x3', f'{p}/5x5', f'{p}/pool_proj'], [f'{p}/output'])
    return out, f'{p}/output'


def aux_head(prefix, bottom):
    """Auxiliary classifier: 5x5/3 average pool, 1x1 conv 128, fc 1024, dropout 0.7, fc 1000."""
    out = pool(f'{prefix}/ave_pool', bottom, 'AVE', 5, 3)
    out += conv(f'{prefix}/conv', f'{prefix}/ave_pool', 128, 1)
    out += relu(f'{prefix}/relu_conv', f'{prefix}/conv')
    out += fc(f'{prefix}/fc', f'{prefix}/conv', 1024, 0.2)
    out += relu(f'{prefix}/relu_fc', f'{prefix}/fc')
    out += dropout(f'{prefix}/drop_fc', f'{prefix}/fc', 0.7)
    out += fc(f'{prefix}/classifier', f'{prefix}/fc', 1000, 0)
    out += loss(f'{prefix}/loss', f'{prefix}/classifier', f'{prefix}/{prefix}', 0.3)
    return out + accuracy(prefix, f'{prefix}/classifier')


def googlenet(batch):
    out = ['# BVLC GoogLeNet (models/bvlc_googlenet/train_val.prototxt) on synthetic input.\n'
           '# Generated by scripts/make_googlenet.py: edit the script, not this file.\n'
           '# Input: 3x224x224 images and integer labels in [0, 1000), set by the caller.\n'
           '# Parameters: 13,378,280 with the auxiliary heads loss1/loss2 (present in\n'
           '# TRAIN and TEST, as in BVLC); 6,998,552 in the main trunk alone.\n'
           'name: "GoogleNet"\n']
    out.append(layer('data', 'Input', [], ['data', 'label'],
                     f'  input_param {{\n    shape {{ dim: {batch} dim: 3 dim: 224 dim: 224 }}\n'
                     f'    shape {{ dim: {batch} }}\n  }}\n'))
    out.append(conv('conv1/7x7_s2', 'data', 64, 7, stride=2, pad=3))
    out.append(relu('conv1/relu_7x7', 'conv1/7x7_s2'))
    out.append(pool('pool1/3x3_s2', 'conv1/7x7_s2', 'MAX', 3, 2))
    out.append(lrn('pool1/norm1', 'pool1/3x3_s2'))
    out.append(conv('conv2/3x3_reduce', 'pool1/norm1', 64, 1))
    out.append(relu('conv2/relu_3x3_reduce', 'conv2/3x3_reduce'))
    out.append(conv('conv2/3x3', 'conv2/3x3_reduce', 192, 3, pad=1))
    out.append(relu('conv2/relu_3x3', 'conv2/3x3'))
    out.append(lrn('conv2/norm2', 'conv2/3x3'))
    out.append(pool('pool2/3x3_s2', 'conv2/norm2', 'MAX', 3, 2))
    bottom = 'pool2/3x3_s2'
    for name, *widths in INCEPTION:
        text, bottom = inception(bottom, name, *widths)
        out.append(text)
        if name in AUX_AFTER:
            out.append(aux_head(AUX_AFTER[name], bottom))
        if name in POOL_AFTER:
            out.append(pool(POOL_AFTER[name], bottom, 'MAX', 3, 2))
            bottom = POOL_AFTER[name]
    out.append(pool('pool5/7x7_s1', bottom, 'AVE', 7, 1))
    out.append(dropout('pool5/drop_7x7_s1', 'pool5/7x7_s1', 0.4))
    out.append(fc('loss3/classifier', 'pool5/7x7_s1', 1000, 0))
    out.append(loss('loss3/loss3', 'loss3/classifier', 'loss3/loss3', 1))
    out.append(accuracy('loss3', 'loss3/classifier'))
    return ''.join(out)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, os.pardir, 'layerasync', 'models', 'googlenet.prototxt')
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-o', '--output', default=os.path.normpath(default),
                        help="where to write ('-' for stdout; default: %(default)s)")
    parser.add_argument('--batch', type=int, default=16, help='Input batch size (default: 16)')
    args = parser.parse_args(argv)
    text = googlenet(args.batch)
    if args.output == '-':
        sys.stdout.write(text)
    else:
        with open(args.output, 'w') as f:
            f.write(text)


if __name__ == '__main__':
    main()
