"""Write the zoo's decoder-only Transformers: gpt-mini and gpt2-small.

Run from the repository root::

    python scripts/make_gpt.py                 # rewrites both prototxt files
    python scripts/make_gpt.py gpt-mini -o -   # prints one instead

One definition, two shapes (``CONFIGS``). The net is GPT-2's (Radford et al.
2019) in Caffe's layers: token ``Embed`` plus a learned positional ``Bias``
over (T, D), then pre-norm blocks of ``LayerNorm`` -> causal
``MultiHeadAttention`` -> ``Eltwise`` SUM with the block's input, and
``LayerNorm`` -> ``InnerProduct`` (4D, ``axis: 2``) -> ``GELU`` ->
``InnerProduct`` (D) -> ``Eltwise`` SUM; a final ``LayerNorm``, the
token-wise classifier over the vocabulary and ``SoftmaxWithLoss`` with
``softmax_param { axis: 2 }`` (mean nats per position). Weights are drawn
as GPT-2 draws them: normal with std 0.02, the projections that end a
residual branch with 0.02 / sqrt(2 x blocks), biases 0. Weight decay
(decay_mult 1) applies to the matrices and the token embedding, not to
biases, norms and the positional embedding. Unlike GPT-2 the classifier is
not tied to the token embedding (layerasync does not share parameters).
"""
import argparse
import math
import os
import sys

CONFIGS = {
    # Trains on the embedded text (data/text.py) on one core in minutes.
    'gpt-mini': dict(blocks=4, width=128, heads=4, context=128, vocabulary=128,
                     train='text:128', test='text:128', batch=32, test_batch=33,
                     title='gpt-mini: a character-level GPT for the embedded English text'),
    # GPT-2 small's shape (124M parameters with a tied classifier; 163M untied),
    # on synthetic ids: for timing and simulator profiles.
    'gpt2-small': dict(blocks=12, width=768, heads=12, context=1024, vocabulary=50257,
                       train='synthetic:1024:50257:1000000', test='synthetic:1024:50257:1000',
                       batch=4, test_batch=4,
                       title="gpt2-small: GPT-2 small's shape on synthetic ids"),
}

WEIGHT, NO_DECAY = '  param { decay_mult: 1 }\n', '  param { decay_mult: 0 }\n'


def layer(name, type_, bottoms, tops, body=''):
    lines = [f'layer {{\n  name: "{name}"\n  type: "{type_}"\n']
    lines += [f'  bottom: "{b}"\n' for b in bottoms]
    lines += [f'  top: "{t}"\n' for t in tops]
    return ''.join(lines) + body + '}\n'


def gaussian(std):
    return f'{{ type: "gaussian" std: {std:.6g} }}'


def data(name, phase, source, batch):
    body = (f'  include {{ phase: {phase} }}\n'
            f'  data_param {{ source: "{source}" batch_size: {batch} }}\n')
    return layer(name, 'Data', [], ['ids', 'next'], body)


def layer_norm(name, bottom, top):
    return layer(name, 'LayerNorm', [bottom], [top], NO_DECAY * 2)


def linear(name, bottom, top, outputs, std):
    body = (WEIGHT + NO_DECAY + '  inner_product_param {\n'
            f'    num_output: {outputs}\n    axis: 2\n'
            f'    weight_filler {gaussian(std)}\n  }}\n')
    return layer(name, 'InnerProduct', [bottom], [top], body)


def block(k, x, c):
    """Pre-norm block ``k`` on blob ``x``; returns (text, its output blob)."""
    p, out_std = f'h{k}', 0.02 / math.sqrt(2 * c['blocks'])
    attention = (WEIGHT + NO_DECAY + WEIGHT + NO_DECAY + '  attention_param {\n'
                 f"    num_heads: {c['heads']}\n    causal: true\n"
                 f'    weight_filler {gaussian(0.02)}\n  }}\n')
    text = (layer_norm(f'{p}/ln1', x, f'{p}/ln1')
            + layer(f'{p}/attn', 'MultiHeadAttention', [f'{p}/ln1'], [f'{p}/attn'], attention)
            + layer(f'{p}/res1', 'Eltwise', [x, f'{p}/attn'], [f'{p}/res1'])
            + layer_norm(f'{p}/ln2', f'{p}/res1', f'{p}/ln2')
            + linear(f'{p}/fc', f'{p}/ln2', f'{p}/fc', 4 * c['width'], 0.02)
            # GELU out of place: in place it keeps a copy of its input anyway, and
            # its backward, reading and writing one gradient, ran 1.5x slower
            # in the net (cache-cold) than reading one and writing another.
            + layer(f'{p}/gelu', 'GELU', [f'{p}/fc'], [f'{p}/gelu'])
            + linear(f'{p}/proj', f'{p}/gelu', f'{p}/proj', c['width'], out_std)
            + layer(f'{p}/res2', 'Eltwise', [f'{p}/res1', f'{p}/proj'], [f'{p}/res2']))
    return text, f'{p}/res2'


def net(name):
    c = CONFIGS[name]
    blocks = c['blocks']
    params = 12 * blocks * c['width'] ** 2 + 13 * blocks * c['width']
    params += (2 * c['vocabulary'] + c['context'] + 2) * c['width'] + c['vocabulary']
    header = (f"# {c['title']}.\n# Written by scripts/make_gpt.py: edit it there. "
              f"{blocks} pre-norm blocks, d = {c['width']}, {c['heads']} heads, context "
              f"{c['context']},\n# vocabulary {c['vocabulary']:,}; {params:,} learned "
              "parameters (classifier untied).\n"
              f"# Data: {c['train']} (TRAIN, batch {c['batch']} per rank), {c['test']} "
              f"(TEST, batch {c['test_batch']}).\n")
    text = header + f'name: "{name}"\n'
    text += data('text', 'TRAIN', c['train'], c['batch'])
    text += data('text', 'TEST', c['test'], c['test_batch'])
    embed = (WEIGHT + f"  embed_param {{\n    num_output: {c['width']}\n"
             f"    input_dim: {c['vocabulary']}\n    bias_term: false\n"
             f'    weight_filler {gaussian(0.02)}\n  }}\n')
    text += layer('wte', 'Embed', ['ids'], ['wte'], embed)
    position = (NO_DECAY + '  bias_param {\n    axis: 1\n    num_axes: 2\n'
                f'    filler {gaussian(0.02)}\n  }}\n')
    text += layer('wpe', 'Bias', ['wte'], ['wpe'], position)
    x = 'wpe'
    for k in range(blocks):
        part, x = block(k, x, c)
        text += part
    text += layer_norm('ln_f', x, 'ln_f')
    text += linear('head', 'ln_f', 'logits', c['vocabulary'], 0.02)
    softmax = '  softmax_param { axis: 2 }\n'
    text += layer('loss', 'SoftmaxWithLoss', ['logits', 'next'], ['loss'], softmax)
    text += layer('accuracy', 'Accuracy', ['logits', 'next'], ['accuracy'],
                  '  include { phase: TEST }\n  accuracy_param { axis: 2 }\n')
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('names', nargs='*', metavar='NAME',
                        help=f"which nets (default all: {', '.join(CONFIGS)})")
    parser.add_argument('-o', '--output', help="a file, or '-' for stdout (one name only)")
    args = parser.parse_args(argv)
    names = args.names or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or (args.output and len(names) > 1):
        parser.error(f"unknown net {unknown[0]!r}; known: {', '.join(CONFIGS)}" if unknown
                     else '-o takes one net')
    for name in names:
        text = net(name)
        if args.output == '-':
            sys.stdout.write(text)
            continue
        path = args.output or os.path.join('layerasync', 'models', f'{name}.prototxt')
        with open(path, 'w') as f:
            f.write(text)
        print(f'wrote {path}')


if __name__ == '__main__':
    main()
