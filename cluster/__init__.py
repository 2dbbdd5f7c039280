"""How the cluster is put together and run: the app builder (`app.py`), the CLI, batch
runs, launching Ray, the in-process pipeline, the client, and the Serve / KubeRay YAML."""
