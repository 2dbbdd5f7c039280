"""Content credentials: every video carries a signed C2PA manifest that a verifier reads back
(and refuses once the file is edited), the container tags stay, and the visible mark is
there when asked for."""

from __future__ import annotations

import io

import av
import numpy as np
import pydantic
import pytest

from contract.request import GenerationRequest
from contract.settings import LabelSettings, Settings
from stages.checkpoint import Checkpoint
from stages.content_credentials import (
    DEVELOPMENT_SIGNER,
    GENERATION,
    SigningIdentity,
    make_identity,
    read_credentials,
    visible_mark,
)
from stages.decoder import Decoder
from stages.denoising import prepare_latents
from stages.video import AI_GENERATED_COMMENT, probe_mp4, prompt_hash


@pytest.fixture(scope="module")
def test_identity(tmp_path_factory):
    """A generated signer and its root, written where the settings read them."""
    identity, root = make_identity("t2v-cluster test signer")
    folder = tmp_path_factory.mktemp("signer")
    (folder / "chain.pem").write_bytes(identity.chain)
    (folder / "key.pem").write_bytes(identity.key)
    return folder, root


def video(settings: Settings, prompt: str = "a red ball bouncing", seed: int = 3):
    checkpoint = Checkpoint.from_settings(settings)
    request = GenerationRequest.build(settings, prompt=prompt, seed=seed)
    latents = prepare_latents(checkpoint.latent_shape(request.num_frames, request.height, request.width), seed)
    return checkpoint, Decoder(checkpoint).video(request, latents)


def test_every_video_carries_a_signed_manifest_that_says_a_model_made_it(settings, test_identity):
    folder, root = test_identity
    labels = LabelSettings(signing_cert=folder / "chain.pem", signing_key=folder / "key.pem")
    checkpoint, made = video(settings.model_copy(update={"labels": labels}))

    credentials = read_credentials(made.mp4, trust_anchors=root)
    assert credentials is not None and credentials.state == "Trusted", credentials
    assert credentials.generated and not credentials.failures
    generation = credentials.assertion(GENERATION)
    assert generation["model"] == {"name": checkpoint.model_id, "version": checkpoint.revision}
    assert generation["seed"] == 3 and generation["prompt_sha256"] == prompt_hash("a red ball bouncing")
    assert credentials.manifest["claim_generator_info"][0]["name"] == "t2v-cluster"
    # the container tags stay, and the video still plays as it did
    probe = probe_mp4(made.mp4)
    assert AI_GENERATED_COMMENT in probe["metadata"]["comment"] and probe["frames"] == made.frames.shape[0]

    # Not trusted by a verifier that does not know the root; still a valid signature.
    assert read_credentials(made.mp4).state == "Valid"
    _, stranger = make_identity("someone else")
    assert read_credentials(made.mp4, trust_anchors=stranger).state != "Trusted"


def test_an_edited_file_fails_verification(settings, test_identity):
    folder, root = test_identity
    labels = LabelSettings(signing_cert=folder / "chain.pem", signing_key=folder / "key.pem")
    _, made = video(settings.model_copy(update={"labels": labels}), seed=4)
    edited = bytearray(made.mp4)
    mdat = edited.find(b"mdat")
    edited[mdat + 64] ^= 0xFF  # one byte of the picture
    credentials = read_credentials(bytes(edited), trust_anchors=root)
    assert credentials.state == "Invalid" and any("mismatch" in code for code in credentials.failures), credentials


def test_without_a_configured_signer_a_development_one_signs(settings, tmp_path):
    local = settings.model_copy(update={"cache_dir": tmp_path})
    _, made = video(local)
    credentials = read_credentials(made.mp4)
    assert credentials.state == "Valid" and credentials.generated
    # made once per node, kept for the next replica; its root verifies what it signed
    root = (tmp_path / "c2pa" / "root.pem").read_bytes()
    assert read_credentials(made.mp4, trust_anchors=root).state == "Trusted"
    assert SigningIdentity.from_settings(local).chain.startswith((tmp_path / "c2pa" / "chain.pem").read_bytes()[:64])
    assert DEVELOPMENT_SIGNER in _subject(made.mp4)
    # and off when switched off
    off = local.model_copy(update={"labels": LabelSettings(c2pa=False)})
    assert read_credentials(video(off)[1].mp4) is None


def _subject(mp4: bytes) -> str:
    credentials = read_credentials(mp4)
    return str(credentials.manifest.get("signature_info", {}))


def test_signer_settings_errors_name_the_setting(settings, tmp_path):
    with pytest.raises(pydantic.ValidationError, match="signing_cert and labels.signing_key go together"):
        LabelSettings(signing_cert=tmp_path / "chain.pem")
    missing = LabelSettings(signing_cert=tmp_path / "chain.pem", signing_key=tmp_path / "key.pem")
    with pytest.raises(ValueError, match=r"labels.signing_cert: cannot read the PEM file \(No such file"):
        SigningIdentity.from_settings(settings.model_copy(update={"labels": missing}))
    (tmp_path / "chain.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----")
    with pytest.raises(ValueError, match="labels.signing_cert: not a PEM file"):
        SigningIdentity.from_settings(settings.model_copy(update={"labels": missing}))


def test_the_visible_mark_sits_in_the_corner_and_nowhere_else(settings, tmp_path):
    frames = np.full((5, 64, 64, 3), 90, np.uint8)
    marked = visible_mark(frames)
    changed = np.argwhere((marked != frames).any(axis=(0, 3)))
    assert len(changed) > 20 and changed.min(axis=0).tolist() >= [64 * 2 // 3, 64 * 2 // 3], changed.min(axis=0)
    assert (marked.max(axis=(1, 2, 3)) > 200).all()  # white letters, on every frame
    assert visible_mark(np.zeros((1, 16, 16, 3), np.uint8)).shape == (1, 16, 16, 3)  # cropped to a tiny frame

    # In the mp4 when asked for (the score is of the frames, not of the mark).
    plain = settings.model_copy(update={"cache_dir": tmp_path, "labels": LabelSettings(c2pa=False)})
    shown = plain.model_copy(update={"labels": LabelSettings(c2pa=False, visible=True)})
    (_, without), (_, with_mark) = video(plain), video(shown)
    assert without.physics == with_mark.physics
    first = [next(av.open(io.BytesIO(v.mp4)).decode(video=0)).to_ndarray(format="rgb24") for v in (without, with_mark)]
    difference = np.abs(first[0].astype(int) - first[1].astype(int)).sum(axis=2)
    corner = difference[40:, 40:].sum()
    assert corner > 0.9 * difference.sum() and corner > 1000
