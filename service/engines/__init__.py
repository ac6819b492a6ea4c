"""What runs the app: uvicorn in this process or its workers (``uvicorn``), and Ray Serve
(``ray``: a deployment per model behind the same app as the ingress).

May import everything in service/ but the command line (service.cli).
"""
