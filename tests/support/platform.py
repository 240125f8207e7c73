"""A workload platform for the federation tests: the key it signs its JWTs with (its public
half for the identity provider to trust), and files written the way kubelet writes them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def platform_key(tmp: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    """A platform's signing key, and its public half as a PEM file for the IdP."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp / "platform.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, public


def kubelet_write(directory: Path, content: str) -> None:
    """Kubernetes' AtomicWriter: the payload in a new timestamped directory, ``..data_tmp``
    pointed at it and renamed over ``..data``, ``token -> ..data/token`` made once, the old
    directory removed. Readers see the old token or the new one, never a mix."""
    directory.mkdir(exist_ok=True)
    stamp = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    stamp.mkdir(mode=0o755)
    (stamp / "token").write_text(content)
    data = directory / "..data"
    old = data.readlink() if data.is_symlink() else None
    tmp_link = directory / "..data_tmp"
    tmp_link.symlink_to(stamp.name)
    os.rename(tmp_link, data)
    if not (directory / "token").is_symlink():
        (directory / "token").symlink_to("..data/token")
    if old is not None:
        for child in (directory / old).iterdir():
            child.unlink()
        (directory / old).rmdir()
