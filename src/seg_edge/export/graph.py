"""Reading an exported graph: which torch module a node came from, and which nodes are InstanceNorm.

The torch.export-based exporter records each node's module path and class hierarchy in the
node's ``metadata_props``; seg-edge renames nodes after their module so that TensorRT layer
names, lint findings and FP16 block lists can say where a node sits.
"""

from __future__ import annotations

import ast

from seg_edge.errors import ArtifactError

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


def norm_edges_through_casts(model) -> list[str]:
    """'producer → consumer' for each value that goes from one InstanceNorm node to another through Casts:
    an FP16 graph must keep the norm's intermediates in float32 (none of these)."""
    norms = set(instance_norm_nodes(model))
    producers = {out: node for node in model.graph.node for out in node.output}
    edges = []
    for node in model.graph.node:
        for name in node.input if node.name in norms else ():
            up, hops = producers.get(name), 0
            while up is not None and up.op_type == "Cast":
                up, hops = producers.get(up.input[0]), hops + 1
            if hops and up is not None and up.name in norms:
                edges.append(f"{up.name} → {node.name}")
    return edges


def _mean_chain(tensor: str, producers: dict) -> tuple[str, list]:
    """Follow ReduceMean nodes up from ``tensor``: (the tensor the means start from, the nodes)."""
    chain = []
    node = producers.get(tensor)
    while node is not None and node.op_type == "ReduceMean" and node.input:
        chain.append(node)
        tensor = node.input[0]
        node = producers.get(tensor)
    return tensor, chain


def _origin(tensor: str, producers: dict) -> str:
    """``tensor`` before any Cast nodes (an FP16 graph casts a norm's input once per consumer)."""
    node = producers.get(tensor)
    while node is not None and node.op_type == "Cast" and node.input:
        tensor = node.input[0]
        node = producers.get(tensor)
    return tensor


def _stable_norm_at(div, producers: dict) -> list | None:
    """The nodes of (x - mean(x)) / sqrt(mean((x - mean(x))²) + eps) ending in ``div``, or None."""
    sub, sqrt = (producers.get(name) for name in (list(div.input) + ["", ""])[:2])
    if sub is None or sqrt is None or sub.op_type != "Sub" or sqrt.op_type != "Sqrt" or len(sub.input) != 2:
        return None
    x, mean = sub.input
    root, mean_chain = _mean_chain(mean, producers)
    add = producers.get(sqrt.input[0]) if sqrt.input else None
    if not mean_chain or _origin(root, producers) != _origin(x, producers) or add is None or add.op_type != "Add":
        return None
    centred = _origin(sub.output[0], producers)
    for term in add.input:
        square, var_chain = _mean_chain(term, producers)
        mul = producers.get(square)
        if (var_chain and mul is not None and mul.op_type == "Mul"
                and [_origin(i, producers) for i in mul.input] == [centred, centred]):
            return [sub, *mean_chain, mul, *var_chain, add, sqrt, div]
    return None


def instance_norm_patterns(model) -> list[list]:
    """Every InstanceNorm the graph computes, found from ops and wiring alone (not names or metadata).

    Each entry lists the nodes of one norm that must stay in FP32: an ``InstanceNormalization``
    node, or the core of seg-edge's stable subgraph (means, centring, square, eps, sqrt, division;
    the affine scale and shift after it are not precision-critical).
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type == "InstanceNormalization":
            found.append([node])
        elif node.op_type == "Div":
            nodes = _stable_norm_at(node, producers)
            if nodes:
                found.append(nodes)
    return found


def checked_instance_norm_nodes(model, source: str) -> list[str]:
    """``instance_norm_nodes``, after checking it found every node of every InstanceNorm in the graph.

    FP16 conversion and TensorRT's FP16 builds keep nodes in FP32 by name, so a norm the
    metadata-based finder misses (an exporter that records modules differently) or a node without a
    unique name would silently run in half precision. ArtifactError names what was missed.
    """
    names = instance_norm_nodes(model)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.name] = counts.get(node.name, 0) + 1
    kept = set(names)
    patterns = instance_norm_patterns(model)
    missed = [node for nodes in patterns for node in nodes
              if not node.name or counts[node.name] > 1 or node.name not in kept]
    if missed:
        shown = ", ".join(f"{n.op_type} '{n.name}' → {n.output[0]}" for n in missed[:3])
        raise ArtifactError(f"{source}: {len(missed)} node(s) of the graph's {len(patterns)} InstanceNorms are not "
                            f"recognised as InstanceNorm by name and exporter metadata, e.g. {shown}; they would "
                            "run in FP16. Re-export the model with this seg-edge ('seg-edge export').")
    return names
