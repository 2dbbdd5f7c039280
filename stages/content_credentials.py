"""Content credentials: every mp4 is signed with a C2PA manifest saying an AI model made it
(`c2pa.created`, IPTC source type trainedAlgorithmicMedia, the model and its revision), as
OpenAI's and Adobe's generators attach them; optionally the frames carry a visible "AI" mark
too. Container tags (stages/video.py) go with any re-mux; the manifest's hash covers the
file, so an edited copy fails verification instead of passing as unlabelled."""

from __future__ import annotations

import datetime
import io
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import c2pa
import numpy as np

from contract.settings import Settings

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
GENERATION = "org.t2v-cluster.generation"  # our assertion: model, revision, seed, prompt hash
DEVELOPMENT_SIGNER = "t2v-cluster development signer (not a real identity)"


@dataclass(frozen=True)
class SigningIdentity:
    chain: bytes  # PEM: the signing certificate, then the certificates that issued it
    key: bytes  # PEM: its private key
    alg: str = "es256"
    timestamp_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SigningIdentity:
        labels = settings.labels
        if labels.signing_cert is None or labels.signing_key is None:
            return development_identity(settings.cache_dir / "c2pa")
        pems = {}
        for name, path in (("signing_cert", labels.signing_cert), ("signing_key", labels.signing_key)):
            try:
                pems[name] = Path(path).read_bytes()
            except OSError as error:
                raise ValueError(f"labels.{name}: cannot read the PEM file ({error.strerror})") from None
            if b"-----BEGIN" not in pems[name]:
                raise ValueError(f"labels.{name}: not a PEM file")
        return cls(pems["signing_cert"], pems["signing_key"], labels.signing_alg, labels.timestamp_url)


def make_identity(common_name: str, days: int = 3650) -> tuple[SigningIdentity, bytes]:
    """A new signing identity issued by a new root of its own: (identity, the root's PEM, for
    a verifier's trust list). For tests and development, never a real identity."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def usage(signs_certificates: bool) -> x509.KeyUsage:
        flags = dict.fromkeys(
            ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
            + ("encipher_only", "decipher_only"),
            False,
        )
        return x509.KeyUsage(
            digital_signature=not signs_certificates,
            key_cert_sign=signs_certificates,
            crl_sign=signs_certificates,
            **flags,
        )

    now = datetime.datetime.now(datetime.UTC)
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(name(f"{common_name} root"))
        .issuer_name(name(f"{common_name} root"))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    # C2PA's rules for a signing certificate: not a CA, digitalSignature, an allowed extended usage.
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    root_pem = root.public_bytes(pem)
    return SigningIdentity(leaf.public_bytes(pem) + root_pem, key_pem), root_pem


def development_identity(directory: Path) -> SigningIdentity:
    """The identity a node signs with when none is configured: made once into `directory` and
    shared by the node's replicas (written whole, so two replicas starting at once agree)."""
    if not (directory / "key.pem").is_file():
        identity, root = make_identity(DEVELOPMENT_SIGNER)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".c2pa-", dir=directory.parent))
        (staging / "chain.pem").write_bytes(identity.chain)
        (staging / "root.pem").write_bytes(root)
        key = staging / "key.pem"
        key.write_bytes(identity.key)
        key.chmod(0o600)
        try:
            os.rename(staging, directory)
        except OSError:  # another replica's came first: use that one
            for f in staging.iterdir():
                f.unlink()
            staging.rmdir()
    return SigningIdentity((directory / "chain.pem").read_bytes(), (directory / "key.pem").read_bytes())


class ContentCredentials:
    """Signs mp4s with a C2PA manifest (stage logic: the decoder calls it on every video)."""

    def __init__(self, identity: SigningIdentity):
        self.identity = identity
        self.generator = {"name": "t2v-cluster", "version": version("t2v-cluster")}

    @classmethod
    def from_settings(cls, settings: Settings) -> ContentCredentials | None:
        return cls(SigningIdentity.from_settings(settings)) if settings.labels.c2pa else None

    def manifest(self, model_id: str, revision: str, seed: int, prompt_sha256: str) -> dict:
        model = {"name": model_id, "version": revision}
        return {
            "claim_generator_info": [self.generator],
            "title": "video.mp4",
            "format": "video/mp4",
            "assertions": [
                {
                    "label": "c2pa.actions",
                    "data": {
                        "actions": [
                            {
                                "action": "c2pa.created",
                                "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                                "softwareAgent": model,
                            }
                        ]
                    },
                },
                {"label": GENERATION, "data": {"model": model, "seed": seed, "prompt_sha256": prompt_sha256}},
            ],
        }

    def sign(self, mp4: bytes, model_id: str, revision: str, seed: int, prompt_sha256: str) -> bytes:
        """The mp4 with its manifest embedded (a few kB more)."""
        info = c2pa.C2paSignerInfo(
            self.identity.alg, self.identity.chain, self.identity.key, self.identity.timestamp_url
        )
        signed = io.BytesIO()
        with (
            c2pa.Signer.from_info(info) as signer,
            c2pa.Builder(self.manifest(model_id, revision, seed, prompt_sha256)) as builder,
        ):
            builder.sign(signer, "video/mp4", io.BytesIO(mp4), signed)
        return signed.getvalue()


@dataclass(frozen=True)
class Credentials:
    """What a verifier reads from a file's manifest."""

    state: str  # C2PA's validation state: "Trusted", "Valid" (signature and hashes hold) or "Invalid"
    manifest: dict  # the active manifest
    failures: list[str]  # the validation failure codes, e.g. "assertion.bmffHash.mismatch"

    @property
    def generated(self) -> bool:
        """Whether it says an AI model made the content."""
        return any(
            action.get("action") == "c2pa.created" and action.get("digitalSourceType") == TRAINED_ALGORITHMIC_MEDIA
            for assertion in self.manifest.get("assertions", [])
            if assertion.get("label", "").startswith("c2pa.actions")
            for action in assertion["data"].get("actions", [])
        )

    def assertion(self, label: str) -> dict | None:
        return next((a["data"] for a in self.manifest.get("assertions", []) if a.get("label") == label), None)


def read_credentials(mp4: bytes, trust_anchors: bytes | None = None) -> Credentials | None:
    """The manifest in `mp4`, verified (against `trust_anchors`, PEM roots, when given);
    None when the file carries none."""
    settings = {"verify": {"verify_trust": trust_anchors is not None}}
    if trust_anchors is not None:
        settings["trust"] = {"trust_anchors": trust_anchors.decode()}
    reader = c2pa.Reader.try_create("video/mp4", io.BytesIO(mp4), context=c2pa.Context.from_dict(settings))
    if reader is None:
        return None
    with reader:
        results = reader.get_validation_results() or {}
        failures = [
            item["code"] for part in results.values() if isinstance(part, dict) for item in part.get("failure", [])
        ]
        return Credentials(reader.get_validation_state() or "", reader.get_active_manifest() or {}, failures)


# -- the visible mark --------------------------------------------------------------------


@lru_cache(maxsize=16)
def _mark(height: int, width: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The "AI" mark for frames of this size: (colour, alpha, top, left), its letters a ninth
    of the frame's height, white on a half-dark box in the bottom-right corner."""
    from PIL import Image, ImageDraw, ImageFont

    size = max(10, height // 9)  # below 10 px the letters blur into a blob
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox("AI")
    pad = max(1, size // 5)
    box = (right - left + 2 * pad, bottom - top + 2 * pad)
    image = Image.new("RGBA", box, (0, 0, 0, 140))
    ImageDraw.Draw(image).text((pad - left, pad - top), "AI", font=font, fill=(255, 255, 255, 255))
    margin = max(1, height // 32)
    # cropped to the frame: on a frame smaller than the mark, its top-left part
    rgba = np.asarray(image).astype(np.float32)[: height - margin, : width - margin]
    return rgba[..., :3], rgba[..., 3:] / 255.0, height - rgba.shape[0] - margin, width - rgba.shape[1] - margin


def visible_mark(frames: np.ndarray) -> np.ndarray:
    """uint8 frames (T, H, W, 3) with the "AI" mark drawn in (a copy)."""
    colour, alpha, top, left = _mark(frames.shape[1], frames.shape[2])
    marked = frames.copy()
    region = marked[:, top : top + alpha.shape[0], left : left + alpha.shape[1]].astype(np.float32)
    marked[:, top : top + alpha.shape[0], left : left + alpha.shape[1]] = np.round(
        region * (1 - alpha) + colour * alpha
    ).astype(np.uint8)
    return marked
