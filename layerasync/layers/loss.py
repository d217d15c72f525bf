"""Losses and metrics: SoftmaxWithLoss, EuclideanLoss, Accuracy.

Labels travel in float blobs, as in Caffe, and are read as integers here.
"""
import numpy as np

from ..kernels import loss as K
from .base import Layer, canonical_axis, register
from .common import softmax

FLT_MIN = np.finfo(np.float32).tiny


class _LabelledLayer(Layer):
    """Scores ``(outer, C, inner...)`` along ``axis`` and labels of ``outer*inner`` values."""

    def _layout(self, bottom, axis):
        scores, labels = bottom[0], bottom[1]
        self.axis = canonical_axis(self, axis, scores.num_axes)
        self.outer = scores.count_range(0, self.axis)
        self.classes = scores.shape[self.axis]
        self.inner = scores.count_range(self.axis + 1)
        self.check(labels.count == self.outer * self.inner,
                   f"label blob '{labels.name}' has {labels.count} values ({labels.shape}) "
                   f"but scores '{scores.name}' {scores.shape} need {self.outer * self.inner}, "
                   f'one per sample')

    def _labels(self, bottom, ignore_label):
        """Labels as ``(outer, inner)`` ints, and the mask of those that count."""
        raw = bottom[1].data.reshape(self.outer, self.inner)
        labels = raw.astype(np.int64)
        valid = np.ones(labels.shape, bool) if ignore_label is None else labels != ignore_label
        bad = valid & ((labels < 0) | (labels >= self.classes) | (labels != raw))
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise self.error(f'label {float(raw[i, j]):g} (sample {i}, position {j}) is not a class '
                             f'index in [0, {self.classes})')
        return labels, valid

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


@register
class SoftmaxWithLoss(_LabelledLayer):
    """Mean cross-entropy of softmax(scores) against integer labels.

    Normalisation as in Caffe's ``loss_param``: VALID (default; non-ignored
    count), FULL (all positions), BATCH_SIZE (outer count), NONE; the legacy
    ``normalize: false`` means BATCH_SIZE. A second top returns the probabilities.
    """
    type = 'SoftmaxWithLoss'
    param_field = 'loss_param'
    num_bottom = (2, 2)
    num_top = (1, 2)
    is_loss = True

    def setup(self, bottom, top):
        p = self.param
        self.ignore_label = p.ignore_label
        self.normalization = p.normalization
        if p.has('normalize') and not p.has('normalization'):
            self.normalization = 'VALID' if p.normalize else 'BATCH_SIZE'
        self.prob = np.empty(0, self.dtype)

    def reshape(self, bottom, top):
        self._layout(bottom, self.spec.softmax_param.axis)
        top[0].reshape(())
        if self.prob.shape != bottom[0].shape:
            self.prob = np.empty(bottom[0].shape, self.dtype)
        if len(top) > 1:
            top[1].reshape_like(bottom[0])

    def _normalizer(self, valid_count):
        n = {'FULL': self.outer * self.inner, 'VALID': valid_count,
             'BATCH_SIZE': self.outer, 'NONE': 1}[self.normalization]
        return max(1.0, float(n))

    def forward(self, bottom, top):
        self.labels, self.valid = self._labels(bottom, self.ignore_label)
        self.normalizer = self._normalizer(int(self.valid.sum()))
        if self.inner == 1:   # classes on the last axis: one kernel pass per row
            loss = K.softmax_loss_forward(
                bottom[0].data.reshape(self.outer, self.classes), self.labels.reshape(-1),
                self.valid.reshape(-1), self.prob.reshape(self.outer, self.classes))
        else:
            softmax(bottom[0].data, self.axis, self.prob)
            prob = self.prob.reshape(self.outer, self.classes, self.inner)
            picked = np.take_along_axis(prob, np.where(self.valid, self.labels, 0)[:, None, :],
                                        1)[:, 0]
            loss = -(np.log(np.maximum(picked, FLT_MIN), dtype=np.float64) * self.valid).sum()
        top[0].data[...] = loss / self.normalizer
        if len(top) > 1:
            np.copyto(top[1].data, self.prob)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        scale = top[0].diff.reshape(-1)[0] / self.normalizer
        if self.inner == 1:
            K.softmax_loss_backward(self.prob.reshape(self.outer, self.classes),
                                    self.labels.reshape(-1), self.valid.reshape(-1), scale,
                                    bottom[0].diff.reshape(self.outer, self.classes))
            return
        dx = bottom[0].diff.reshape(self.outer, self.classes, self.inner)
        np.copyto(dx, self.prob.reshape(dx.shape))
        outer, inner = np.nonzero(self.valid)
        dx[outer, self.labels[outer, inner], inner] -= 1
        dx *= scale * self.valid[:, None, :]


@register
class EuclideanLoss(Layer):
    """sum((a - b)^2) / (2 N) over two blobs of equal count; N = a.shape[0]."""
    type = 'EuclideanLoss'
    num_bottom = (2, 2)
    is_loss = True

    def reshape(self, bottom, top):
        self.check(bottom[0].count == bottom[1].count,
                   f"bottoms '{bottom[0].name}' {bottom[0].shape} and '{bottom[1].name}' "
                   f'{bottom[1].shape} must have the same number of values')
        top[0].reshape(())
        self.difference = np.empty(bottom[0].shape, self.dtype)

    def forward(self, bottom, top):
        np.subtract(bottom[0].data, bottom[1].data.reshape(bottom[0].shape), out=self.difference)
        d = self.difference.reshape(-1)
        top[0].data[...] = np.dot(d, d) / bottom[0].shape[0] / 2

    def backward(self, top, propagate_down, bottom):
        scale = top[0].diff.reshape(-1)[0] / bottom[0].shape[0]
        for sign, b, down in ((1, bottom[0], propagate_down[0]), (-1, bottom[1], propagate_down[1])):
            if down:
                np.multiply(self.difference.reshape(b.shape), sign * scale, out=b.diff)


@register
class Accuracy(_LabelledLayer):
    """Fraction of samples whose label is among the ``top_k`` scores.

    As in Caffe, a class scoring equal to the true class counts as better,
    so ties go against the prediction. A second top gives per-class accuracy.
    """
    type = 'Accuracy'
    param_field = 'accuracy_param'
    num_bottom = (2, 2)
    num_top = (1, 2)

    def reshape(self, bottom, top):
        self._layout(bottom, self.param.axis)
        self.check(1 <= self.param.top_k <= self.classes,
                   f'top_k {self.param.top_k} must be in [1, {self.classes}] (number of classes)')
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.classes,))

    def forward(self, bottom, top):
        labels, valid = self._labels(bottom, self.param.ignore_label)
        scores = bottom[0].data.reshape(self.outer, self.classes, self.inner)
        true = np.take_along_axis(scores, np.where(valid, labels, 0)[:, None, :], 1)
        better = (scores >= true).sum(axis=1) - 1  # the true class counts itself
        # A score that is NaN compares false with everything, so a sample whose
        # scores are all NaN would look correct: a diverged net scoring 100%.
        correct = (better < self.param.top_k) & valid & ~np.isnan(scores).any(axis=1)
        count = valid.sum()
        top[0].data[...] = correct.sum() / count if count else 0.0
        if len(top) > 1:
            per_class = np.bincount(labels[valid], minlength=self.classes)
            hits = np.bincount(labels[correct], minlength=self.classes)
            top[1].data[...] = np.divide(hits, per_class, out=np.zeros(self.classes),
                                         where=per_class > 0)
