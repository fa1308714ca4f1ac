"""The adapters' shared door to the Kubernetes API server (`client`: calls; `reflector`: list + watch).

Adapter-side I/O: the extender, the controller, the node agent and the cluster CLI import it; it imports
only `gpupool` and third-party packages, and the pure model in `gpupool/` never imports it (checked by
`make lint`, see `.importlinter`).
"""
