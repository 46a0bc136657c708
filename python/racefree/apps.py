"""The optional ``racefree`` app: add it to INSTALLED_APPS to have Django's
system checks (``manage.py check``) check every racefree cache in CACHES
(see ``racefree.checks``)."""

from django.apps import AppConfig
from django.core import checks


class RacefreeConfig(AppConfig):
    name = "racefree"
    verbose_name = "racefree cache backends"

    def ready(self) -> None:
        from racefree.checks import check_caches

        checks.register(check_caches, checks.Tags.caches)
