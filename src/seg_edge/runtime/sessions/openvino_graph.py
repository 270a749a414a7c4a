"""OpenVINO graph rewrites applied when a model is read (before compiling).

**InstanceNorm → MVN.** seg-edge's export writes InstanceNorm as a numerically stable subgraph
(``export/norm.py``): per-axis ReduceMean chains, centred values, a second pass for the variance::

    c = x - mean_z(mean_y(mean_x(x)))
    y = c / sqrt(mean_z(mean_y(mean_x(c * c))) + eps)

OpenVINO cannot fuse that chain, so it runs six reductions and the arithmetic as separate passes over
the activation (about 40 % of a window's time on an AVX-512 CPU, measured with ``PERF_COUNT``). The
same computation is OpenVINO's ``MVN`` (normalize_variance, eps inside the square root, over the
spatial axes), which its CPU plugin runs as one fused kernel. The rewrite matches the subgraph
exactly (the chain must reduce ``x`` itself and the square must be ``c * c``) and replaces the
division's output; anything else is left alone. Its effect on the logits is measured against ONNX
Runtime in ``tests/unit/test_openvino.py`` and in docs/BENCHMARKS.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["fuse_instance_norms"]


def _reduce_chain_root(node: Any, spatial_dims: int) -> Any:
    """``x`` if ``node`` is ReduceMean applied ``spatial_dims`` times over single axes of ``x``; else None."""
    for _ in range(spatial_dims):
        if node.get_type_name() != "ReduceMean":
            return None
        node = node.input_value(0).get_node()
    return node


def _same(a: Any, b: Any) -> bool:
    return a.get_node() is b.get_node() and a.get_index() == b.get_index()


def _eps_of(add: Any) -> tuple[object | None, float | None]:
    """(the other input's node, eps) for ``Add(reduced, Constant eps)`` in either order."""
    left, right = add.input_value(0).get_node(), add.input_value(1).get_node()
    if right.get_type_name() != "Constant":
        left, right = right, left
    if right.get_type_name() != "Constant":
        return None, None
    values = np.asarray(right.get_data()).ravel()
    if values.size != 1:
        return None, None
    return left, float(values[0])


def _match(divide: Any, spatial_dims: int) -> tuple[Any, float | None] | None:
    """(x output, eps) when ``divide`` ends the stable InstanceNorm subgraph; else None."""
    sub, sqrt = divide.input_value(0).get_node(), divide.input_value(1).get_node()
    if sub.get_type_name() != "Subtract" or sqrt.get_type_name() != "Sqrt":
        return None
    x = sub.input_value(0)
    mean_root = _reduce_chain_root(sub.input_value(1).get_node(), spatial_dims)
    if mean_root is None or mean_root is not x.get_node():
        return None
    add = sqrt.input_value(0).get_node()
    if add.get_type_name() != "Add":
        return None
    reduced, eps = _eps_of(add)
    if reduced is None:
        return None
    square = _reduce_chain_root(reduced, spatial_dims)
    if square is None or square.get_type_name() != "Multiply":
        return None
    if not all(square.input_value(i).get_node() is sub for i in (0, 1)):
        return None
    if len(x.get_partial_shape()) != spatial_dims + 2:
        return None
    return x, eps


def fuse_instance_norms(model: Any, spatial_dims: int = 3) -> int:
    """Replace each stable-InstanceNorm subgraph in ``model`` (in place) by OpenVINO's MVN; returns how many."""
    from openvino import opset6

    count = 0
    axes = np.arange(2, 2 + spatial_dims, dtype=np.int64)
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Divide":
            continue
        found = _match(node, spatial_dims)
        if found is None:
            continue
        x, eps = found
        mvn = opset6.mvn(x, opset6.constant(axes), True, eps, "inside_sqrt")
        node.output(0).replace(mvn.output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count
