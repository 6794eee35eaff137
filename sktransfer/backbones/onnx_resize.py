"""torch's antialiased uint8 resize, written in ONNX operators so that it gives torch's pixels.

torch resizes a uint8 image (what torchvision's ``resize`` does to our
images) PIL's way: two separable passes, width then height; in each, every
output pixel is a weighted sum of a window of input pixels, with the
filter's weights normalized per pixel and rounded to 16-bit fixed point, and
the sum rounded back to 8 bits. ONNX's ``Resize`` computes in float and
differs by one level on a fifth of the pixels, which a sensitive head turns
into probabilities 1e-3 apart; this graph computes what torch computes:
the same windows, weights (in double), precision and rounding, on any
input and output size given at run time. The weights are those integers
times ``2**-p``: a power of two, so float32 sums keep torch's integer sums
(below 2**24, exact in any order of summation) and the rounding shift is
a floor of the sum plus one half.
"""

import numpy as np
from onnx import TensorProto, helper

#: Filter support (taps at scale 1) of each interpolation.
INTERP_SIZE = {"bilinear": 2, "bicubic": 4}
#: PIL's (and torch's antialiased) bicubic coefficient.
CUBIC_A = -0.5
#: Output pixels per block of :func:`resize_axis` (one small matrix product each).
BLOCK = 32


def resize_axis(g, x, axis, in_size, out_size, interpolation, first, count, finish=None):
    """``x`` (uint8, ``(..., H, W)``) resized along ``axis`` (-1 or -2) and cropped (uint8),
    or ``finish(g, block)`` of each uint8 block, joined.

    ``in_size``, ``out_size`` and ``first`` are one-element int64 tensors of
    the graph; ``count`` (an int) output pixels are kept from ``first`` on (a
    crop that follows the resize), and computed alone.

    The kept pixels go in blocks of at most :data:`BLOCK`: each block reads
    only the slab of input pixels its windows cover and is one small matrix
    product, so the work grows with the filter's support, not with the
    input's size (one dense (out, in) matrix multiplies mostly zeros: 7 in 8
    for 224 -> 256 px). The blocks are unrolled (``count`` is known when the
    graph is built); their slab offsets are computed at run time. Slabs are
    cast to float32 one by one, so slicing moves bytes, not floats, and
    ``finish`` (the normalization, say) runs on each block while it is still in
    the cache: only the joined result crosses memory whole.
    """
    weights, index = _windows(g, in_size, out_size, interpolation, first, count)
    int64 = np.int64
    blocks = -(-count // BLOCK)
    padded = blocks * BLOCK
    # Rows past ``count`` repeat the last window with weight 0 (never multiplied).
    pad = g.const(np.array([0, 0, padded - count, 0], int64))
    index = g.node("Pad", [index, pad], mode="edge")
    weights = g.node("Pad", [weights, pad])
    by_block = g.node("Reshape", [index, g.const(np.array([blocks, BLOCK, -1], int64))])
    start = g.node("ReduceMin", [by_block, g.const([1, 2])], keepdims=0)
    stop = g.node("ReduceMax", [by_block, g.const([1, 2])], keepdims=0)
    slab = g.node("Add", [g.node("ReduceMax", [g.node("Sub", [stop, start])], keepdims=1),
                          g.const(np.array([1], int64))])
    # A slab that would run past the input starts earlier (its windows still fit).
    start = g.node("Min", [start, g.node("Sub", [in_size, slab])])
    # Each window's taps as positions in its block's slab: a dense (BLOCK, slab)
    # matrix per block.
    row_start = g.node("Reshape", [g.node("Expand", [
        g.node("Unsqueeze", [start, g.const([1])]), g.const(np.array([blocks, BLOCK], int64))]),
        g.const(np.array([-1, 1], int64))])
    size = g.node("Concat", [g.const(np.array([padded], int64)), slab], axis=0)
    zeros = g.node("ConstantOfShape", [size], value=helper.make_tensor(
        "zero", TensorProto.FLOAT, [1], [0.0]))
    dense = g.node("ScatterElements", [zeros, g.node("Sub", [index, row_start]), weights],
                   axis=1, reduction="add")
    if axis == -1:  # (R, in) @ (in, out): the weights as (slab, BLOCK) blocks
        dense = g.node("Transpose", [dense], perm=[1, 0])
        rows_shape = g.node("Concat", [g.const(np.array([-1], int64)), slab], axis=0)
    half = g.const(np.float32(0.5))
    parts = []
    for b in range(blocks):
        keep = min(BLOCK, count - b * BLOCK)
        rows = g.const(np.array([b * BLOCK], int64)), g.const(np.array([b * BLOCK + keep], int64))
        begin = g.node("Slice", [start, g.const([b]), g.const([b + 1])])
        piece = g.node("Slice", [x, begin, g.node("Add", [begin, slab]), g.const([axis])])
        piece = g.node("Cast", [piece], to=TensorProto.FLOAT)
        if axis == -1:
            # One (N * C * H, slab) @ (slab, keep) product, the rounding's half as its bias.
            w = g.node("Slice", [dense, *rows, g.const([1])])
            part = g.node("Gemm", [g.node("Reshape", [piece, rows_shape]), w, half])
        else:
            w = g.node("Slice", [dense, *rows, g.const([0])])
            part = g.node("Add", [g.node("MatMul", [w, piece]), half])
        part = _rounded(g, part, interpolation)
        parts.append(part if finish is None else finish(g, part))
    out = parts[0] if blocks == 1 else g.node("Concat", parts, axis=axis)
    if axis == -1:
        out = g.node("Reshape", [out, g.node("Concat", [
            g.node("Slice", [g.node("Shape", [x]), g.const([0]), g.const([-1])]),
            g.const(np.array([count], int64))], axis=0)])
    return out


def _rounded(g, halved, interpolation):
    """The weighted sums plus 1/2 (the weights carry 2**-p, exact) floored to uint8:
    ``(sum + 2**(p-1)) >> p``, as torch rounds."""
    if interpolation != "bilinear":
        # Bicubic's negative lobes overshoot: clamp to 8 bits, as torch does. A
        # bilinear sum never leaves [0, 255.5]: its weights are positive, and
        # rounding them adds at most K/2 units of 2**-p, K < 2**p / 255.
        halved = g.node("Clip", [halved, g.const(np.float32(0)), g.const(np.float32(255))])
    # Casting truncates: the floor of a non-negative value.
    return g.node("Cast", [halved], to=TensorProto.UINT8)


def _windows(g, in_size, out_size, interpolation, first, count):
    """Each kept output pixel's window: ``(weights, index)``.

    ``weights`` (float32, the fixed-point integers times ``2**-p``) and
    ``index`` (int64) are ``(count, K)``, ``K`` the widest window; taps past a
    window read its last pixel with weight 0.
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
    weights = _fixed_point(g, weights)
    last = g.node("Sub", [n_in, one])
    index = g.node("Cast", [g.node("Min", [index, last])], to=TensorProto.INT64)
    # The rows of the kept pixels (the precision above is the whole axis's, as torch's).
    end = g.node("Add", [first, g.const(np.array([count], np.int64))])
    return (g.node("Slice", [weights, first, end, g.const([0])]),
            g.node("Slice", [index, first, end, g.const([0])]))


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
    """The weights as torch rounds them to fixed point, as float32 ``integer * 2**-p``:
    ``p`` the largest precision below 22 bits at which twice the largest weight fits in
    int16 (scaling by a power of two is exact, so sums keep torch's integers)."""
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
    return g.node("Cast", [g.node("Div", [integer, unit])], to=TensorProto.FLOAT)
