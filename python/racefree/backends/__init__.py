"""Django cache backends, laid out like ``django.core.cache.backends``."""
