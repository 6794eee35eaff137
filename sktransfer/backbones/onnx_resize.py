"""torch's antialiased uint8 resize, written in ONNX operators so that it gives torch's pixels.

torch resizes a uint8 image (what torchvision's ``resize`` does to our
images) PIL's way: two separable passes, width then height; in each, every
output pixel is a weighted sum of a window of input pixels, with the
filter's weights normalized per pixel and rounded to 16-bit fixed point, and
the sum rounded back to 8 bits. ONNX's ``Resize`` computes in float and
differs by one level on a fifth of the pixels, which a sensitive head turns
into probabilities 1e-3 apart; this graph computes what torch computes:
the same windows, weights (in double), precision and rounding, on any
input and output size given at run time. The weighted sums are of integers
below 2**24, exact in float32 in any order of summation.
"""

import numpy as np
from onnx import TensorProto, helper

#: Filter support (taps at scale 1) of each interpolation.
INTERP_SIZE = {"bilinear": 2, "bicubic": 4}
#: PIL's (and torch's antialiased) bicubic coefficient.
CUBIC_A = -0.5


def resize_axis(g, x, axis, in_size, out_size, interpolation, first=None, count=None):
    """``x`` (float32 holding uint8 values) resized along ``axis`` (2: height, 3: width).

    ``in_size`` and ``out_size`` are one-element int64 tensors of the graph.
    ``first`` and ``count`` (the same kind) keep only the output pixels
    ``first`` to ``first + count`` (a crop that follows the resize), computed
    alone; by default all ``out_size``.
    """
    double = TensorProto.DOUBLE
    n_in = g.node("Cast", [in_size], to=double)
    n_out = g.node("Cast", [out_size], to=double)
    scale = g.node("Div", [n_in, n_out])
    downscaling = g.node("GreaterOrEqual", [scale, g.const(np.array([1.0]))])
    half = INTERP_SIZE[interpolation] * 0.5
    support = g.node("Where", [downscaling, g.node("Mul", [scale, g.const(np.array([half]))]),
                               g.const(np.array([half]))])
    inverse = g.node("Where", [downscaling, g.node("Reciprocal", [scale]),
                               g.const(np.array([1.0]))])
    zero, one = g.const(np.array(0.0)), g.const(np.array(1.0))
    outputs = g.node("Range", [zero, g.node("Squeeze", [n_out, g.const([0])]), one])
    center = g.node("Mul", [scale, g.node("Add", [outputs, g.const(np.array(0.5))])])
    # The window of input pixels: [xmin, xmax), as torch truncates it.
    xmin = g.node("Max", [g.node("Floor", [g.node("Add", [
        g.node("Sub", [center, support]), g.const(np.array(0.5))])]), zero])
    xmax = g.node("Min", [g.node("Floor", [g.node("Add", [
        g.node("Add", [center, support]), g.const(np.array(0.5))])]), n_in])
    width = g.node("Cast", [g.node("ReduceMax", [g.node("Sub", [xmax, xmin])], keepdims=0)],
                   to=TensorProto.INT64)
    taps = g.node("Cast", [g.node("Range", [g.const(np.array(0, np.int64)), width,
                                            g.const(np.array(1, np.int64))])], to=double)
    column = g.node("Unsqueeze", [xmin, g.const([1])])
    index = g.node("Add", [column, g.node("Unsqueeze", [taps, g.const([0])])])  # (out, K)
    inside = g.node("Less", [index, g.node("Unsqueeze", [xmax, g.const([1])])])
    offset = g.node("Mul", [g.node("Add", [g.node("Sub", [
        index, g.node("Unsqueeze", [center, g.const([1])])]), g.const(np.array(0.5))]),
        inverse])
    weights = g.node("Where", [inside, _filter(g, offset, interpolation), zero])
    total = g.node("ReduceSum", [weights, g.const([1])], keepdims=1)
    weights = g.node("Div", [weights, g.node("Where", [
        g.node("Equal", [total, zero]), one, total])])
    weights, precision = _fixed_point(g, weights)
    # Taps past the window read the last pixel with weight 0.
    last = g.node("Sub", [n_in, one])
    index = g.node("Cast", [g.node("Min", [index, last])], to=TensorProto.INT64)
    if first is not None:
        # The rows of the kept pixels (the precision above is the whole axis's, as torch's).
        end = g.node("Add", [first, count])
        weights = g.node("Slice", [weights, first, end, g.const([0])])
        index = g.node("Slice", [index, first, end, g.const([0])])
    else:
        count = out_size
    # The windows' weights as one (out, in) matrix, zero outside each window: the
    # pass is then one matrix product (a gather of every window, multiplied and
    # summed, moves several times the image through memory).
    size = g.node("Concat", [count, in_size], axis=0)
    zeros = g.node("ConstantOfShape", [size], value=helper.make_tensor(
        "zero", TensorProto.FLOAT, [1], [0.0]))
    dense = g.node("ScatterElements", [zeros, index, weights], axis=1, reduction="add")
    if axis == 3:  # (N, C, H, in) @ (in, out)
        summed = g.node("MatMul", [x, g.node("Transpose", [dense], perm=[1, 0])])
    else:  # (out, in) @ (N, C, in, W)
        summed = g.node("MatMul", [dense, x])
    # (sum + 2**(p-1)) >> p (times 2**-p: exact, and cheaper than dividing), clamped to 8 bits.
    rounded = g.node("Floor", [g.node("Mul", [g.node("Add", [
        summed, g.node("Mul", [precision, g.const(np.float32(0.5))])]),
        g.node("Reciprocal", [precision])])])
    return g.node("Clip", [rounded, g.const(np.float32(0)), g.const(np.float32(255))])


def _filter(g, x, interpolation):
    """The interpolation kernel at ``x`` (double)."""
    ax = g.node("Abs", [x])
    one = g.const(np.array(1.0))
    if interpolation == "bilinear":
        return g.node("Max", [g.node("Sub", [one, ax]), g.const(np.array(0.0))])
    a = CUBIC_A
    x2 = g.node("Mul", [ax, ax])
    x3 = g.node("Mul", [x2, ax])
    # |x| < 1: (a + 2)|x|^3 - (a + 3)|x|^2 + 1;  1 <= |x| < 2: a(|x|^3 - 5|x|^2 + 8|x| - 4)
    near = g.node("Add", [g.node("Sub", [g.node("Mul", [x3, g.const(np.array(a + 2))]),
                                         g.node("Mul", [x2, g.const(np.array(a + 3))])]), one])
    far = g.node("Mul", [g.node("Add", [g.node("Sub", [
        g.node("Add", [g.node("Sub", [x3, g.node("Mul", [x2, g.const(np.array(5.0))])]),
                       g.node("Mul", [ax, g.const(np.array(8.0))])]),
        g.const(np.array(4.0))]), g.const(np.array(0.0))]), g.const(np.array(a))])
    return g.node("Where", [g.node("Less", [ax, one]), near, g.node("Where", [
        g.node("Less", [ax, g.const(np.array(2.0))]), far, g.const(np.array(0.0))])])


def _fixed_point(g, weights):
    """``(weights as float32 integers, 2**precision as float32)``, as torch rounds them:
    the largest precision below 22 bits at which twice the largest weight fits in int16."""
    largest = g.node("ReduceMax", [weights], keepdims=0)
    steps = g.const(2.0 ** np.arange(1, 23))
    fits = g.node("Less", [g.node("Floor", [g.node("Add", [
        g.node("Mul", [largest, steps]), g.const(np.array(0.5))])]),
        g.const(np.array(2.0 ** 15))])
    bits = g.node("ReduceSum", [g.node("Cast", [fits], to=TensorProto.DOUBLE)], keepdims=0)
    unit = g.node("Pow", [g.const(np.array(2.0)), bits])
    scaled = g.node("Mul", [weights, unit])
    # Rounded half away from zero (torch: (int)(w * 2**p +- 0.5)).
    integer = g.node("Mul", [g.node("Sign", [scaled]), g.node("Floor", [g.node("Add", [
        g.node("Abs", [scaled]), g.const(np.array(0.5))])])])
    return (g.node("Cast", [integer], to=TensorProto.FLOAT),
            g.node("Cast", [unit], to=TensorProto.FLOAT))
