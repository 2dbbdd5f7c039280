"""The latent cache: text embeddings, boundary latents and finished results (see issue 4)."""
