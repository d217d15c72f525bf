"""Caffe's data transformation (crop, mirror, mean, scale) and its mean files.

``Transform`` does what Caffe's ``DataTransformer`` does to a datum, batch-wise
and into a preallocated float array. ``read_mean_file`` reads a Caffe
``BlobProto`` (``.binaryproto``, as written by ``compute_image_mean``) with a
small decoder of the protobuf wire format, or a NumPy ``.npy``.
"""
import os

import numpy as np

from .. import proto, schema
from .options import DataError
from .sampler import keyed_bits

__all__ = ['Transform', 'read_mean_file', 'read_blobproto']

# Independent random streams for the three per-sample choices.
_CROP_ROW, _CROP_COL, _MIRROR = 0x4352, 0x4343, 0x4D49


class Transform:
    """Caffe's ``transform_param`` (None: the defaults) for uint8 images of
    ``shape`` (C, H, W) in ``phase``.

    Each image becomes ``(crop(image) - crop(mean)) * scale``, flipped left to
    right if mirrored, computed in ``dtype`` as Caffe computes it:

    - ``crop_size``: a square window, at a random place in TRAIN and in the
      centre in TEST; ``output_shape`` is then (C, crop_size, crop_size);
    - ``mirror``: a horizontal flip with probability 1/2, in TRAIN only
      (Caffe also flips in TEST; a test score should not depend on coin flips);
    - ``mean_file`` (uncropped image size, path relative to ``root``) or
      ``mean_value`` (one for all channels, or one per channel);
    - ``scale``: a factor applied last.

    A sample's random choices are keyed by ``(seed, position)``, its position
    in the shared sample stream (see ``sampler``), so they do not depend on
    the rank layout and a batch needs no random state to be reproduced.
    """

    def __init__(self, param, shape, phase='TRAIN', seed=0, root=None, dtype=np.float32):
        param = param if param is not None else proto.Message(schema.TransformationParameter)
        channels, height, width = shape
        self.seed, self.dtype, self.scale = seed, np.dtype(dtype), param.scale
        for name in ('force_color', 'force_gray'):
            if getattr(param, name):
                raise DataError(f'transform_param.{name} applies to encoded (JPEG/PNG) images; '
                                'the layerasync sources hold raw pixels: remove it')
        self.crop_size = param.crop_size
        if self.crop_size < 0 or self.crop_size > min(height, width):
            raise DataError(f'transform_param.crop_size {self.crop_size} does not fit images of '
                            f'{height}x{width}: give 0 (no crop) up to {min(height, width)}')
        crop_h = self.crop_size or height
        crop_w = self.crop_size or width
        self.output_shape = (channels, crop_h, crop_w)
        self.random_crop = phase == 'TRAIN' and self.crop_size > 0
        self.mirror = phase == 'TRAIN' and param.mirror
        self.centre = ((height - crop_h) // 2, (width - crop_w) // 2)
        self.crop_range = (height - crop_h + 1, width - crop_w + 1)
        self.mean = self._mean(param, shape, root)

    def _mean(self, param, shape, root):
        """The mean as a (C, H, W) array of ``dtype``, broadcast when per channel."""
        if param.mean_file and param.mean_value:
            raise DataError('transform_param: give mean_file or mean_value, not both')
        if param.mean_file:
            path = os.path.join(os.path.expanduser(root) if root else os.getcwd(),
                                os.path.expanduser(param.mean_file))
            mean = read_mean_file(os.path.abspath(path))
            if mean.ndim == 4 and mean.shape[0] == 1:
                mean = mean[0]
            if mean.shape != tuple(shape):
                raise DataError(f'mean file {path} holds shape {mean.shape}, but the images are '
                                f'{tuple(shape)}: the mean must have the uncropped image shape')
            return mean.astype(self.dtype)
        values = np.array(param.mean_value or [0.0], self.dtype)
        if len(values) not in (1, shape[0]):
            raise DataError(f'transform_param: {len(values)} mean_value entries for '
                            f'{shape[0]}-channel images; give one for all channels, '
                            'or one per channel')
        return np.broadcast_to(np.resize(values, shape[0])[:, None, None], shape)

    @property
    def per_sample(self):
        """Does each sample need its own window (crop) or orientation (mirror)?"""
        return self.crop_size > 0 or self.mirror

    def windows(self, positions):
        """Top rows, left columns and mirror flags for the samples at stream ``positions``."""
        n = len(positions)
        tops = np.full(n, self.centre[0], np.int64)
        lefts = np.full(n, self.centre[1], np.int64)
        flips = np.zeros(n, bool)
        if self.random_crop:
            tops = (keyed_bits(self.seed, _CROP_ROW, positions)
                    % np.uint64(self.crop_range[0])).astype(np.int64)
            lefts = (keyed_bits(self.seed, _CROP_COL, positions)
                     % np.uint64(self.crop_range[1])).astype(np.int64)
        if self.mirror:
            flips = (keyed_bits(self.seed, _MIRROR, positions) >> np.uint64(63)).astype(bool)
        return tops, lefts, flips

    def apply(self, images, positions, out):
        """Write transformed ``images`` (uint8 (B, C, H, W)) into ``out`` ((B,) + output_shape).

        ``positions`` are the samples' stream positions (they key the random choices).
        """
        if self.per_sample:
            _, crop_h, crop_w = self.output_shape
            for i, (top, left, flip) in enumerate(zip(*self.windows(positions))):
                window = np.s_[:, top:top + crop_h, left:left + crop_w]
                image, mean = images[i][window], self.mean[window]
                if flip:
                    image, mean = image[..., ::-1], mean[..., ::-1]
                np.subtract(image, mean, out=out[i])
        else:
            np.subtract(images, self.mean, out=out)
        if self.scale != 1:
            out *= self.scale


# ------------------------------------------------------------------ mean files

def read_mean_file(path):
    """The array in ``path``: a NumPy ``.npy``, or else a Caffe BlobProto."""
    if not os.path.isfile(path):
        raise DataError(f'{path}: no such mean file (transform_param.mean_file); give a Caffe '
                        '.binaryproto (from compute_image_mean) or a .npy of shape (C, H, W)')
    if path.endswith('.npy'):
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f'{path}: not a readable .npy file: {e}') from None
    with open(path, 'rb') as f:
        return read_blobproto(f.read(), path)


def _varint(buf, pos, where):
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise DataError(f'{where}: truncated protobuf (a number runs past the end)')
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise DataError(f'{where}: corrupt protobuf (a number longer than 10 bytes)')


_FIXED_SIZE = {1: 8, 5: 4}  # wire type -> bytes: fixed64 (double), fixed32 (float)


def _wire_fields(buf, where):
    """Protobuf wire format: yields (field number, wire type, int or bytes)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, where)
        elif wire == 2 or wire in _FIXED_SIZE:
            if wire == 2:
                size, pos = _varint(buf, pos, where)
            else:
                size = _FIXED_SIZE[wire]
            if pos + size > len(buf):
                raise DataError(f'{where}: truncated protobuf (field {field} runs past the end)')
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise DataError(f'{where}: not a Caffe BlobProto (protobuf wire type {wire} '
                            f'in field {field})')
        yield field, wire, value


def _packed_varints(buf, where):
    values, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos, where)
        values.append(value)
    return values


# BlobProto fields (caffe.proto): num=1 channels=2 height=3 width=4 (legacy 4-d shape),
# data=5 (float), shape=7 (BlobShape: dim=1), double_data=8; diff=6 and double_diff=9 are
# not needed. Repeated numbers may come packed (wire type 2) or one by one.
_LEGACY_DIMS = (1, 2, 3, 4)
_DATA = {5: ('<f4', 5), 8: ('<f8', 1)}  # field -> (dtype, unpacked wire type)


def read_blobproto(raw, where='<bytes>'):
    """The float array of a serialized Caffe BlobProto, in its shape.

    The shape is ``shape { dim }`` if present, else (num, channels, height,
    width); the values are ``data`` (float32) or else ``double_data``.
    """
    legacy, dims, chunks = {}, None, {5: [], 8: []}
    for field, wire, value in _wire_fields(raw, where):
        if field in _LEGACY_DIMS and wire == 0:
            legacy[field] = value
        elif field == 7 and wire == 2:
            dims = []
            for sub, sub_wire, sub_value in _wire_fields(value, where):
                if sub == 1:
                    dims += _packed_varints(sub_value, where) if sub_wire == 2 else [sub_value]
        elif field in _DATA and wire in (2, _DATA[field][1]):
            chunks[field].append(value)
    if dims is None:
        dims = [legacy.get(f, 0) for f in _LEGACY_DIMS]
    field = 5 if chunks[5] or not chunks[8] else 8
    payload = b''.join(chunks[field])
    itemsize = 4 if field == 5 else 8
    if len(payload) % itemsize:
        raise DataError(f'{where}: corrupt BlobProto: {len(payload)} bytes of data is not a '
                        f'whole number of {itemsize}-byte values')
    values = np.frombuffer(payload, _DATA[field][0])
    count = int(np.prod(dims, dtype=np.int64))
    if any(d >= 2 ** 31 for d in dims) or values.size != count or count == 0:
        raise DataError(f'{where}: BlobProto of shape {tuple(dims)} holds {values.size} values; '
                        'expected a non-empty blob with one value per element: corrupt, or not '
                        'a mean file')
    return values.reshape(dims)
