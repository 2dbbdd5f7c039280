"""The latent cache: text embeddings, boundary latents and finished results, shared by a
node's replicas (`store.LatentCache`), under keys that hold everything that changes a
result (`keys`)."""
