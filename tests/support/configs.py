"""Config files for tests: a credential block, and a config around blocks."""

from __future__ import annotations

from pathlib import Path


def credential_toml(
    idp_url: str, tmp: Path, name: str = "api", extra: str = "", sinks: str | None = None
) -> str:
    """A credential block with a client id, a secret file, and one raw sink."""
    secret = tmp / f"{name}.secret"
    if not secret.exists():
        secret.write_text("s3cret-value\n")
        secret.chmod(0o600)
    if sinks is None:
        sinks = f'[[credentials.{name}.sink]]\npath = "{tmp}/out/{name}.token"\n'
    (tmp / "out").mkdir(exist_ok=True)
    return (
        f"[credentials.{name}]\n"
        f'token_url = "{idp_url}"\n'
        'client_id = "client-1"\n'
        f'client_secret_file = "{secret}"\n'
        f"{extra}\n"
        f"{sinks}\n"
    )


def write_config(tmp: Path, *blocks: str, state: bool = True) -> Path:
    head = f'[tokend]\nstate_dir = "{tmp}/state"\n\n' if state else ""
    path = tmp / "tokend.toml"
    path.write_text(head + "\n".join(blocks))
    path.chmod(0o600)
    return path
