"""Write layerasync/models/resnet50.prototxt: ResNet-50 for ImageNet on synthetic data.

Run from the repository root::

    python scripts/make_resnet50.py            # rewrites layerasync/models/resnet50.prototxt
    python scripts/make_resnet50.py -o -       # prints it instead

The structure and layer names are those of He et al.'s Caffe definition
(KaimingHe/deep-residual-networks, prototxt/ResNet-50-deploy.prototxt; "Deep
Residual Learning for Image Recognition", CVPR 2016, Table 1, 50-layer column):
conv1 7x7/2 with BatchNorm + Scale + ReLU, pool1 3x3/2 MAX, then stages res2..res5
of 3, 4, 6 and 3 bottleneck blocks, pool5 7x7 AVE and fc1000. As there:

- a bottleneck block is 1x1 (width w), 3x3 (w), 1x1 (4w), each convolution followed
  by BatchNorm + Scale in place and all but the last by ReLU; Eltwise SUM with the
  shortcut, then ReLU;
- the first block of every stage has a projection shortcut branch1 (1x1 conv to 4w
  + BatchNorm + Scale), and where the stage halves the resolution (res3a, res4a,
  res5a) the stride 2 sits on branch1 and on the first 1x1 convolution (branch2a),
  not on the 3x3 (the later "v1.5" variant moves it there);
- the convolutions have no bias except conv1, which has one in that definition.

The deploy file has no fillers and no learning-rate multipliers: the ones here are
this zoo's (see resnet20.prototxt): msra weights, BatchNorm statistics not learned
(lr_mult 0), conv1's bias at lr_mult 2 without decay, fc1000 gaussian 0.01 so that
the untrained net predicts nearly uniformly. Data: two Data layers on synthetic
ImageNet-sized sources (TRAIN 1,281,167 and TEST 50,000 images of 3x224x224, 1000
classes); the batch per rank is set by ``--batch`` (default 32).
"""
import argparse
import os
import sys

# Stages: (stage number, blocks, bottleneck width w, stride of its first block).
# The blocks of a stage are lettered a, b, c, ...; a block's output has 4w channels.
STAGES = [(2, 3, 64, 1), (3, 4, 128, 2), (4, 6, 256, 2), (5, 3, 512, 2)]
EXPANSION = 4
CLASSES = 1000
TRAIN_IMAGES, TEST_IMAGES = 1_281_167, 50_000   # ImageNet (ILSVRC 2012) train and val
TEST_BATCH = 50                                 # x test_iter 1000 = the 50,000 val images
MEAN_BGR = (104, 117, 123)                      # BVLC's ImageNet channel means
NOT_LEARNED = '  param { lr_mult: 0 decay_mult: 0 }\n' * 3


def layer(name, type_, bottoms, tops, body=''):
    lines = [f'layer {{\n  name: "{name}"\n  type: "{type_}"\n']
    lines += [f'  bottom: "{b}"\n' for b in bottoms]
    lines += [f'  top: "{t}"\n' for t in tops]
    return ''.join(lines) + body + '}\n'


def data(phase, batch, count, mirror):
    transform = ''.join(f'    mean_value: {m}\n' for m in MEAN_BGR)
    if mirror:
        transform += '    mirror: true\n'
    body = (f'  include {{ phase: {phase} }}\n'
            f'  transform_param {{\n{transform}  }}\n'
            f'  data_param {{\n    source: "synthetic:3x224x224:{CLASSES}:{count}"\n'
            f'    batch_size: {batch}\n  }}\n')
    return layer('data', 'Data', [], ['data', 'label'], body)


def conv(name, bottom, num_output, kernel, stride=1, pad=0, bias=False):
    if bias:
        params = '  param { lr_mult: 1 decay_mult: 1 }\n  param { lr_mult: 2 decay_mult: 0 }\n'
    else:
        params = '  param { lr_mult: 1 decay_mult: 1 }\n'
    geometry = f'    num_output: {num_output}\n'
    if not bias:
        geometry += '    bias_term: false\n'
    if pad:
        geometry += f'    pad: {pad}\n'
    geometry += f'    kernel_size: {kernel}\n'
    if stride != 1:
        geometry += f'    stride: {stride}\n'
    fillers = '    weight_filler { type: "msra" }\n'
    if bias:
        fillers += '    bias_filler { type: "constant" value: 0 }\n'
    body = params + '  convolution_param {\n' + geometry + fillers + '  }\n'
    return layer(name, 'Convolution', [bottom], [name], body)


def bn_scale(bn_name, scale_name, blob):
    """BatchNorm and Scale (with bias) in place on ``blob``."""
    return (layer(bn_name, 'BatchNorm', [blob], [blob], NOT_LEARNED)
            + layer(scale_name, 'Scale', [blob], [blob], '  scale_param { bias_term: true }\n'))


def relu(name, blob):
    return layer(name, 'ReLU', [blob], [blob])


def pool(name, bottom, kind, kernel, stride):
    body = f'  pooling_param {{\n    pool: {kind}\n    kernel_size: {kernel}\n    stride: {stride}\n  }}\n'
    return layer(name, 'Pooling', [bottom], [name], body)


def bottleneck(bottom, block, width, stride, project):
    """Block ``block`` (e.g. '3a'): branch2 a/b/c, the shortcut, SUM and ReLU."""
    def branch(which, source, num_output, kernel, stride=1, pad=0, activate=True):
        name = f'res{block}_branch{which}'
        text = conv(name, source, num_output, kernel, stride, pad) + \
            bn_scale(f'bn{block}_branch{which}', f'scale{block}_branch{which}', name)
        return text + relu(f'{name}_relu', name) if activate else text
    out, shortcut = '', bottom
    if project:   # listed first, as in the Caffe definition
        out += branch('1', bottom, EXPANSION * width, 1, stride, activate=False)
        shortcut = f'res{block}_branch1'
    out += branch('2a', bottom, width, 1, stride)
    out += branch('2b', f'res{block}_branch2a', width, 3, pad=1)
    out += branch('2c', f'res{block}_branch2b', EXPANSION * width, 1, activate=False)
    out += layer(f'res{block}', 'Eltwise', [shortcut, f'res{block}_branch2c'], [f'res{block}'],
                 '  eltwise_param { operation: SUM }\n')
    return out + relu(f'res{block}_relu', f'res{block}'), f'res{block}'


HEADER = '''\
# ResNet-50 for ImageNet (He et al. 2016, Table 1) as in the authors' Caffe definition
# (KaimingHe/deep-residual-networks, prototxt/ResNet-50-deploy.prototxt), on synthetic data.
# Generated by scripts/make_resnet50.py: edit the script, not this file.
# conv1 7x7/2 64 (with bias) + BatchNorm + Scale + ReLU, pool1 3x3/2 MAX, then stages
# res2, res3, res4, res5 of 3, 4, 6, 3 bottleneck blocks (1x1 w, 3x3 w, 1x1 4w with
# w = 64, 128, 256, 512), pool5 7x7 AVE, fc1000, SoftmaxWithLoss. The convolutions
# after conv1 have no bias; each is followed by BatchNorm + Scale, in place. A block's
# output is ReLU(branch2c + shortcut); the first block of each stage projects its
# shortcut (branch1: 1x1 conv + BatchNorm + Scale), and res3a, res4a and res5a halve
# the resolution with stride 2 on branch1 and on the 1x1 branch2a (not on the 3x3).
# Blob sizes: 224 -> conv1 112 -> pool1 56 (res2, 256 channels) -> res3 28 (512)
# -> res4 14 (1024) -> res5 7 (2048) -> pool5 1 -> fc1000 (pool1 has no padding and
# rounds up, as Caffe's pooling does: (112 - 3) / 2 + 1 -> 56).
# BatchNorm normalises with batch statistics in TRAIN and with its running ones in TEST;
# its three blobs hold those statistics and are not learned (param lr_mult 0, as in Caffe).
# 25,557,096 learned parameters (+ 53,173 BatchNorm statistics): the usual ResNet-50
# count of 25,557,032 plus conv1's 64 biases, which this definition keeps (under
# BatchNorm they change nothing).
# Data: random images (synthetic, deterministic from the seed) of ImageNet's size and
# count: 1,281,167 for TRAIN, 50,000 for TEST (at batch 50, test_iter 1000), 1000 classes.
# Batch {batch} per rank in TRAIN (the paper's 256 is 8 ranks of 32); set another with
# `layerasync time --batch`, or regenerate with `make_resnet50.py --batch`.
name: "ResNet-50"
'''


def resnet50(batch):
    out = [HEADER.format(batch=batch),
           data('TRAIN', batch, TRAIN_IMAGES, mirror=True),
           data('TEST', TEST_BATCH, TEST_IMAGES, mirror=False),
           conv('conv1', 'data', 64, 7, stride=2, pad=3, bias=True),
           bn_scale('bn_conv1', 'scale_conv1', 'conv1'),
           relu('conv1_relu', 'conv1'),
           pool('pool1', 'conv1', 'MAX', 3, 2)]
    bottom = 'pool1'
    for stage, blocks, width, stride in STAGES:
        for i in range(blocks):
            text, bottom = bottleneck(bottom, f'{stage}{"abcdefgh"[i]}', width,
                                      stride if i == 0 else 1, project=i == 0)
            out.append(text)
    out.append(pool('pool5', bottom, 'AVE', 7, 1))
    out.append(layer('fc1000', 'InnerProduct', ['pool5'], ['fc1000'],
                     '  param { lr_mult: 1 decay_mult: 1 }\n  param { lr_mult: 2 decay_mult: 0 }\n'
                     f'  inner_product_param {{\n    num_output: {CLASSES}\n'
                     '    weight_filler { type: "gaussian" std: 0.01 }\n'
                     '    bias_filler { type: "constant" value: 0 }\n  }\n'))
    test_only = '  include { phase: TEST }\n'
    out.append(layer('accuracy', 'Accuracy', ['fc1000', 'label'], ['accuracy'], test_only))
    out.append(layer('accuracy_top5', 'Accuracy', ['fc1000', 'label'], ['accuracy_top5'],
                     test_only + '  accuracy_param { top_k: 5 }\n'))
    out.append(layer('loss', 'SoftmaxWithLoss', ['fc1000', 'label'], ['loss']))
    return ''.join(out)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, os.pardir, 'layerasync', 'models', 'resnet50.prototxt')
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-o', '--output', default=os.path.normpath(default),
                        help="where to write ('-' for stdout; default: %(default)s)")
    parser.add_argument('--batch', type=int, default=32,
                        help='TRAIN batch per rank (default: 32)')
    args = parser.parse_args(argv)
    text = resnet50(args.batch)
    if args.output == '-':
        sys.stdout.write(text)
    else:
        with open(args.output, 'w') as f:
            f.write(text)


if __name__ == '__main__':
    main()
