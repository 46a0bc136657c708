import logging

from django.http import JsonResponse
from django.utils.deprecation import MiddlewareMixin

logger = logging.getLogger("races")


class ErrorsAsJson(MiddlewareMixin):
    """A view's exception becomes a 500 naming it, so the load generator
    can report which bug it met. (MiddlewareMixin: sync under gunicorn and
    async under uvicorn, so async views stay on the event loop.)"""

    def process_exception(self, request, exception):
        logger.error("%s failed", request.path, exc_info=exception)
        return JsonResponse({"error": f"{type(exception).__name__}: {exception}"[:300]}, status=500)
