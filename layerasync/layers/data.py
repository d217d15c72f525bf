"""Input: tops whose shapes are given in the prototxt and whose data the user sets."""
from .base import Layer, register


@register
class Input(Layer):
    """``input_param { shape { dim: ... } }``: one shape per top, or one for all."""
    type = 'Input'
    param_field = 'input_param'
    num_bottom = (0, 0)
    num_top = (1, None)

    def setup(self, bottom, top):
        shapes = self.param.shape
        self.check(len(shapes) in (1, len(top)),
                   f'{len(shapes)} input shapes for {len(top)} tops; give one, or one per top')
        for j, blob in enumerate(top):
            dims = tuple(shapes[j if len(shapes) > 1 else 0].dim)
            self.check(all(d > 0 for d in dims),
                       f"input '{blob.name}' shape {dims}: dimensions must be positive")
            blob.reshape(dims)

    def reshape(self, bottom, top):
        """Shapes stay as set up, or as the user reshaped the blobs (pycaffe style)."""

    def forward(self, bottom, top):
        """The data is already in the tops."""
