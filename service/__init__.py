"""The dyt-deploy inference service (Open Inference Protocol v2 over FastAPI)."""
