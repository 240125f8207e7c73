"""django-oauth-toolkit as a real third-party token endpoint, for the tests.

Usage: python -m tests.thirdparty.dot_idp DB_PATH CLIENT_ID CLIENT_SECRET LIFETIME
Prints ``PORT <n>`` once it listens on 127.0.0.1, then serves until killed.
"""

from __future__ import annotations

import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

import django
from django.conf import settings

db, client_id, client_secret, lifetime = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
settings.configure(
    DEBUG=False,
    SECRET_KEY="tokend-tests-only",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "oauth2_provider"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": db}},
    MIDDLEWARE=[],
    USE_TZ=True,
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    OAUTH2_PROVIDER={
        "ACCESS_TOKEN_EXPIRE_SECONDS": lifetime,
        "SCOPES": {"read": "read", "write": "write"},
        "DEFAULT_SCOPES": ["read"],
    },
)
django.setup()

from django.core.management import call_command  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.urls import include, path  # noqa: E402

urlpatterns = [path("o/", include("oauth2_provider.urls", namespace="oauth2_provider"))]


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    call_command("migrate", verbosity=0)
    from oauth2_provider.models import Application

    Application.objects.create(
        name="tokend",
        client_id=client_id,
        client_secret=client_secret,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
    )
    httpd = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=Quiet)
    print(f"PORT {httpd.server_address[1]}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
