"""diffusers' tiled Wan VAE decode in its two halves, so the tiles can be decoded anywhere.

`AutoencoderKLWan.tiled_decode` decodes overlapping tiles of the latent one after another and
blends their overlaps. Here each tile is decoded on its own (`decode_tiles`) and `assemble`
blends them as diffusers does: a decoder whose ranks each decode a share of the tiles
(patch-parallel VAE, as xDiT and TensorRT-LLM's VisualGen split it) makes the video
`tiled_decode` makes, in a fraction of the time. The grid (`TileGrid`) is plain arithmetic, so
the cost model charges a rank's share of the work from the same tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from contract.settings import DecodingSettings


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one latent, in latent cells, as `tiled_decode` lays them out."""

    latent_size: tuple[int, int]  # (height, width) of the latent
    tile: tuple[int, int]  # latent cells a tile covers (less at the far edges)
    stride: tuple[int, int]  # latent cells between tiles' origins
    ratio: int  # pixels per latent cell (the VAE's spatial compression)

    @classmethod
    def of(cls, latent_height: int, latent_width: int, ratio: int, tiling: DecodingSettings) -> TileGrid:
        return cls(
            (latent_height, latent_width),
            (tiling.tile_px // ratio, tiling.tile_px // ratio),
            (tiling.stride_px // ratio, tiling.stride_px // ratio),
            ratio,
        )

    @property
    def origins(self) -> list[tuple[int, int]]:
        """Each tile's first latent cell, row by row (the order `tiled_decode` decodes them in)."""
        (height, width), (stride_h, stride_w) = self.latent_size, self.stride
        return [(i, j) for i in range(0, height, stride_h) for j in range(0, width, stride_w)]

    def share(self, rank: int, ranks: int) -> list[tuple[int, int]]:
        """The tiles rank `rank` of `ranks` decodes: every ranks-th, so each rank gets tiles of
        every size (the edge tiles are smaller)."""
        return self.origins[rank::ranks]

    def cells(self, origin: tuple[int, int]) -> int:
        """Latent cells of the tile at `origin` (a tile at the far edge is cut by the latent)."""
        (i, j), (height, width), (tile_h, tile_w) = origin, self.latent_size, self.tile
        return (min(i + tile_h, height) - i) * (min(j + tile_w, width) - j)

    def busiest_share(self, ranks: int) -> float:
        """The decode work of the busiest of `ranks` ranks, as a share of one untiled decode of the
        whole latent (above 1/ranks: tiles overlap, and tiles do not divide evenly)."""
        whole = math.prod(self.latent_size)
        return max(sum(self.cells(o) for o in self.share(rank, ranks)) for rank in range(ranks)) / whole


def tiled(vae, tiling: DecodingSettings):
    """`vae` with diffusers' tiling on at `tiling`'s sizes (its `decode` then tiles what is larger)."""
    vae.enable_tiling(tiling.tile_px, tiling.tile_px, tiling.stride_px, tiling.stride_px)
    return vae


def grid_of(vae, z: torch.Tensor) -> TileGrid:
    """The grid `vae` (tiling on) decodes latent `z` (B, C, T, H, W) in."""
    ratio = vae.spatial_compression_ratio
    return TileGrid(
        tuple(z.shape[-2:]),
        (vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio),
        (vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio),
        ratio,
    )


@torch.no_grad()
def decode_tiles(vae, z: torch.Tensor, origins: list[tuple[int, int]]) -> dict[tuple[int, int], torch.Tensor]:
    """The tiles at `origins` of latent `z`, each decoded alone, frame by frame through the causal
    decoder's feature cache (the loop of `tiled_decode`)."""
    grid = grid_of(vae, z)
    tile_h, tile_w = grid.tile
    tiles = {}
    for i, j in origins:
        vae.clear_cache()
        frames = []
        for k in range(z.shape[2]):
            vae._conv_idx = [0]
            tile = vae.post_quant_conv(z[:, :, k : k + 1, i : i + tile_h, j : j + tile_w])
            frames.append(vae.decoder(tile, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=k == 0))
        tiles[(i, j)] = torch.cat(frames, dim=2)
    vae.clear_cache()
    return tiles


def assemble(vae, z: torch.Tensor, tiles: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
    """The video of latent `z` from all its decoded tiles: each blended into the tiles above and
    to its left, cut to its stride, joined and clamped, as `tiled_decode` ends."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    grid = grid_of(vae, z)
    patch = vae.config.patch_size or 1
    sample_h, sample_w = (n * grid.ratio // patch for n in grid.latent_size)
    stride_h, stride_w = vae.tile_sample_stride_height // patch, vae.tile_sample_stride_width // patch
    blend_h = vae.tile_sample_min_height // patch - stride_h
    blend_w = vae.tile_sample_min_width // patch - stride_w
    rows, columns = (sorted({origin[axis] for origin in grid.origins}) for axis in (0, 1))
    blended, joined = {}, []  # each tile blends into its neighbours as they were blended themselves
    for a, i in enumerate(rows):
        row = []
        for b, j in enumerate(columns):
            tile = tiles[(i, j)].clone()  # blending works in place: the caller's tiles stay as decoded
            if a > 0:
                tile = vae.blend_v(blended[(rows[a - 1], j)], tile, blend_h)
            if b > 0:
                tile = vae.blend_h(blended[(i, columns[b - 1])], tile, blend_w)
            blended[(i, j)] = tile
            row.append(tile[:, :, :, :stride_h, :stride_w])
        joined.append(torch.cat(row, dim=-1))
    video = torch.cat(joined, dim=3)[:, :, :, :sample_h, :sample_w]
    if vae.config.patch_size is not None:
        video = unpatchify(video, patch_size=vae.config.patch_size)
    return torch.clamp(video, min=-1.0, max=1.0)
