"""How a batch of cases is spread: the local engine is ``seg_edge.runtime.runner`` (one process);
``ray`` runs the cases on Ray actors, one loaded model each, on this machine or a cluster (extra 'ray').

Engines import no torch; each one's heavy dependency is imported when it runs."""
