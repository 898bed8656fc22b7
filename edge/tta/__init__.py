"""fedge.edge.tta: cloud-edge forward-only test-time adaptation (CEMA-style), LAME/Tent baselines, streams.

Device-side modules (``selection``, ``device``, ``lame``) need only numpy, grpc and onnxruntime; the cloud side
(``distill``, ``cloud``, ``tent``, ``task``) uses PyTorch. See docs/tta.md.
"""
