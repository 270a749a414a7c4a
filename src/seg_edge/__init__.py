"""seg-edge: deploy a 3D U-Net for brain-tumour segmentation at the edge.

The public API imports neither torch nor onnxruntime; backends load on demand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Segmenter", "load_artifact", "ModelCard", "__version__"]

if TYPE_CHECKING:
    from seg_edge.card import ModelCard
    from seg_edge.artifact import load_artifact
    from seg_edge.runtime.segmenter import Segmenter


def __getattr__(name: str) -> Any:
    if name in ("load_artifact", "ModelCard"):
        from seg_edge import artifact

        return getattr(artifact, name)
    if name == "Segmenter":
        from seg_edge.runtime.segmenter import Segmenter

        return Segmenter
    raise AttributeError(name)
