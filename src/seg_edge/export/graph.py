"""Reading an exported graph: which torch module a node came from, and which nodes are InstanceNorm.

The torch.export-based exporter records each node's module path and class hierarchy in the
node's ``metadata_props``; seg-edge renames nodes after their module so that TensorRT layer
names, lint findings and FP16 block lists can say where a node sits.
"""

from __future__ import annotations

import ast

SCOPES = "pkg.torch.onnx.name_scopes"
CLASSES = "pkg.torch.onnx.class_hierarchy"


def _meta_list(node, key: str) -> list[str]:
    raw = next((p.value for p in node.metadata_props if p.key == key), "")
    try:
        value = ast.literal_eval(raw) if raw else []
    except (ValueError, SyntaxError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def module_scope(node) -> str:
    """The torch module path a node was exported from ('' if unknown), e.g. 'skip_layers.downsample.norm1'."""
    names = _meta_list(node, SCOPES)
    return names[-2] if len(names) >= 2 else ""


def name_nodes_by_module(model) -> None:
    """Rename nodes '<module path>/<op>_<k>' (unique); nodes without a recorded module keep their name."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        scope = module_scope(node)
        if not scope:
            continue
        base = f"{scope}/{node.op_type}"
        counts[base] = counts.get(base, 0) + 1
        node.name = f"{base}_{counts[base] - 1}"


def instance_norm_nodes(model) -> list[str]:
    """Names of the nodes that compute InstanceNorm: the ONNX op, or seg-edge's stable subgraph."""
    names = []
    for node in model.graph.node:
        classes = _meta_list(node, CLASSES)
        if node.op_type == "InstanceNormalization" or any("InstanceNorm" in c for c in classes[:-1]):
            names.append(node.name)
    return names
