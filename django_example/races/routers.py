class CacheTableRouter:
    """Django's cache table lives in the PostgreSQL database ``cache``;
    everything else in SQLite."""

    def _for(self, model):
        return "cache" if model._meta.app_label == "django_cache" else None

    def db_for_read(self, model, **hints):
        return self._for(model)

    def db_for_write(self, model, **hints):
        return self._for(model)

    def allow_migrate(self, db, app_label, **hints):
        return (db == "cache") == (app_label == "django_cache")
