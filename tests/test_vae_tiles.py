"""Tiled and parallel VAE decode: tiles decoded one by one and blended here make diffusers' tiled
video exactly; a decoder of two ranks makes the one-process decoder's frames; the settings refuse a
decoder of ranks with nothing to share; the simulated decoder charges its busiest rank's share."""

from __future__ import annotations

import pytest
import torch

from contract.request import GenerationRequest
from contract.settings import DecodingSettings, DeploymentSettings, ParallelSettings, Settings
from stages.checkpoint import Checkpoint
from stages.decoder import Decoder, simulated_decode_share
from stages.vae_tiles import TileGrid, assemble, decode_tiles, grid_of, tiled

SMALL_TILES = DecodingSettings(tiled=True, tile_px=32, stride_px=24)


def with_decoder(settings: Settings, ranks: int) -> Settings:
    deployments = dict(settings.deployments)
    deployments["Decoder"] = DeploymentSettings(num_cpus=0.25, parallel=ParallelSettings(ulysses=ranks))
    return settings.model_copy(update={"deployments": deployments})


@pytest.fixture(scope="module")
def latents(wan22_dir) -> torch.Tensor:
    checkpoint = Checkpoint(wan22_dir, Settings(model=wan22_dir))
    shape = checkpoint.latent_shape(17, 64, 96)  # not square: rows and columns of tiles differ
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def test_tiles_decoded_apart_and_assembled_make_diffusers_tiled_video(wan22_dir, latents):
    vae = tiled(Checkpoint(wan22_dir, Settings(model=wan22_dir)).vae(), SMALL_TILES)
    grid = grid_of(vae, latents)
    assert len(grid.origins) > 4  # the test's video spans several tiles each way
    with torch.no_grad():
        reference = vae.tiled_decode(latents, return_dict=False)[0]
        # any split of the tiles, decoded in any order, assembles to the same video
        odd, even = (decode_tiles(vae, latents, grid.origins[r::2]) for r in (1, 0))
    video = assemble(vae, latents, {**odd, **even})
    assert video.shape == reference.shape and torch.equal(video, reference)


def test_a_decoder_of_two_ranks_decodes_as_one_process_does(wan22_dir, latents):
    settings = Settings(model=wan22_dir, decoding=SMALL_TILES)
    alone = Decoder(Checkpoint(wan22_dir, settings))(latents)
    untiled = Decoder(Checkpoint(wan22_dir, Settings(model=wan22_dir)))(latents)
    pair = Decoder(Checkpoint(wan22_dir, with_decoder(settings, 2)))
    try:
        assert pair.ranks is not None and all(p.device.type == "meta" for p in pair.vae.parameters())
        frames = pair(latents)
    finally:
        pair.close()
    assert frames.shape == alone.shape == untiled.shape and (frames == alone).all()
    assert not (frames == untiled).all()  # tiled: the overlaps are blends, not the untiled decode


def test_a_decoder_of_ranks_needs_tiles_to_share(wan22_dir):
    plain = Settings(model=wan22_dir)
    with pytest.raises(ValueError, match=r"decoding.tiled: true"):
        with_decoder(plain, 2).model_validate(with_decoder(plain, 2).model_dump())
    with pytest.raises(ValueError, match="stride_px"):
        DecodingSettings(tiled=True, tile_px=32, stride_px=48)
    settings = Settings(model=wan22_dir, decoding=SMALL_TILES)
    assert with_decoder(settings, 2).model_validate(with_decoder(settings, 2).model_dump())


def test_the_grid_shares_720p_tiles_and_the_busiest_rank_sets_the_time():
    grid = TileGrid.of(90, 160, 8, DecodingSettings(tiled=True))  # 1280x720, diffusers' 256/192 px tiles
    assert len(grid.origins) == 4 * 7
    whole = grid.busiest_share(1)
    assert 1.5 < whole < 1.9  # the overlaps: tiled work beyond one untiled decode
    shares = [grid.busiest_share(n) for n in (1, 2, 4, 8)]
    assert shares == sorted(shares, reverse=True) and shares[-1] >= whole / 8
    assert grid.busiest_share(28) == max(grid.cells(o) for o in grid.origins) / (90 * 160)


def test_the_simulated_decoder_charges_its_busiest_rank_and_counts_every_gpu(wan22_dir, tmp_path):
    from tests.test_simulated import request_720p, sim_settings

    base = sim_settings(wan22_dir, tmp_path, cache={"enabled": False})
    spent = {}
    for ranks in (1, 4):
        settings = with_decoder(base.model_copy(update={"decoding": DecodingSettings(tiled=True)}), ranks)
        decoder = Decoder(Checkpoint.from_settings(settings))
        request: GenerationRequest = request_720p(settings)
        loaded = decoder.gpu.seconds
        decoder.video(request, None)
        spent[ranks] = (decoder.gpu.seconds - loaded, decoder.gpu.gpus)
        share = simulated_decode_share(settings, 720, 1280, 81)
        assert spent[ranks][0] == pytest.approx(decoder.gpu.cost.decode_seconds(720, 1280, 81) * share)
    assert spent[4][0] < spent[1][0] / 3 and spent[4][1] == 4
