import logging

from django.http import JsonResponse

logger = logging.getLogger("races")


class ErrorsAsJson:
    """A view's exception becomes a 500 naming it, so the load generator
    can report which bug it met."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        logger.error("%s failed", request.path, exc_info=exception)
        return JsonResponse({"error": f"{type(exception).__name__}: {exception}"[:300]}, status=500)
