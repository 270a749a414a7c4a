"""``seg-edge serve``: an HTTP API and a page (upload, progress, NiiVue viewer) over the torch-free runtime.

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart, Pillow); imports no torch.
"""
