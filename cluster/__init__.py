"""How the pieces are put together and run: config, default model, pipeline, CLI."""
