"""tokend keeps OAuth2 client-credentials access tokens fresh on disk."""

__version__ = "0.1.0"
