"""Sampling text from a trained character-level net, and the baseline it must beat.

``Generator(net)`` takes a TEST-phase net whose first layer is a ``Data``
layer on a text source (``text:T``, see ``data.text``) and whose loss is a
``SoftmaxWithLoss`` over (N, T, V) logits, as the zoo's gpt-mini: it writes a
context into the ids blob, runs the layers between the data and the loss, and
draws the next character from the logits at the context's last position
(positions after it are padding: a causal net never looks at them).

``bigram_loss(train, test)`` is the cross-entropy, in nats per character, of
a character bigram model (add-one smoothed counts of the TRAIN windows' pairs)
on the pairs the net is scored on: each TEST window's ids and labels.
"""
import numpy as np

from .data import DataError
from .net import TEST, Net, load_net_param, set_batch_size

__all__ = ['Generator', 'bigram_loss', 'text_net']


def text_net(model, data=None):
    """The TEST net of ``model`` (a prototxt path) at batch 1, for sampling."""
    return Net(set_batch_size(load_net_param(model), 1), TEST, data=data)


class Generator:
    """Sample characters from ``net`` (see the module docstring)."""

    def __init__(self, net):
        self.net = net
        first = net.layers[0] if net.layers else None
        source = getattr(getattr(first, 'dataset', None), 'source', None)
        self.vocabulary = getattr(source, 'vocabulary', None)
        if self.vocabulary is None:
            raise ValueError(f"net '{net.name}': sampling needs a net whose first layer is a "
                             "Data layer on a text source (data_param { source: \"text:T\" })")
        self.ids = net.top_vecs[0][0]
        self.context = self.ids.shape[1]
        losses = [i for i, layer in enumerate(net.layers) if layer.is_loss]
        if not losses or net.layers[losses[0]].type != 'SoftmaxWithLoss':
            raise ValueError(f"net '{net.name}': sampling needs a SoftmaxWithLoss over the "
                             'logits (N, T, V)')
        self.loss = losses[0]
        self.logits = net.bottom_vecs[self.loss][0]
        if self.logits.shape[:2] != self.ids.shape or self.logits.shape[2] < len(self.vocabulary):
            raise ValueError(f"net '{net.name}': logits of shape {self.logits.shape} do not "
                             f'score the {len(self.vocabulary)} characters at each of the '
                             f'{self.context} positions of ids {self.ids.shape}')

    def probabilities(self, ids, temperature=1.0):
        """The distribution (float64, over the vocabulary) of the character after ``ids``
        (its last ``context`` ids count)."""
        ids = np.asarray(ids)[-self.context:]
        self.ids.data[...] = 0
        self.ids.data[0, :len(ids)] = ids
        self.net.forward(start=self.net.layers[1].name, end=self.net.layers[self.loss - 1].name)
        logits = self.logits.data[0, len(ids) - 1, :len(self.vocabulary)].astype(np.float64)
        logits /= temperature
        p = np.exp(logits - logits.max())
        return p / p.sum()

    def sample(self, prompt, length, temperature=1.0, seed=0):
        """``prompt`` followed by ``length`` sampled characters."""
        if not prompt:
            raise ValueError('the prompt must hold at least one character')
        if not temperature > 0:
            raise ValueError(f'temperature must be > 0, not {temperature}')
        rng = np.random.default_rng(seed)
        try:
            ids = list(self.vocabulary.encode(prompt))
        except DataError as e:
            raise DataError(f'the prompt: {e}') from None
        for _ in range(length):
            p = self.probabilities(ids, temperature)
            ids.append(int(rng.choice(len(p), p=p)))
        return self.vocabulary.decode(ids)


def _pairs(source):
    x = np.empty((source.count,) + source.shape, source.dtype)
    indices = np.arange(source.count)
    source.read(indices, x)
    return x.reshape(-1), source.read_labels(indices).reshape(-1)


def bigram_loss(train, test):
    """Nats per character of an add-one bigram model of ``train`` on ``test``'s
    (id, label) pairs; both are text sources with the same vocabulary."""
    v = len(train.vocabulary)
    ids = train.ids
    counts = np.bincount(ids[:-1].astype(np.int64) * v + ids[1:], minlength=v * v)
    counts = counts.reshape(v, v) + 1.0
    log_p = np.log(counts / counts.sum(axis=1, keepdims=True))
    previous, following = _pairs(test)
    return float(-log_p[previous, following].mean())
