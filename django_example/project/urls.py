from django.urls import path
from races import views

urlpatterns = [
    path("health/", views.health),
    path("echo/<str:key>/", views.echo),
    path("incr/", views.incr),
    path("counter/", views.counter),
    path("add/<str:key>/", views.add),
    path("forwarding/reset/", views.reset_forwarding),
    path("start/", views.start),
    # The ASGI run's async views (uvicorn project.asgi:application).
    path("async/incr/", views.async_incr),
    path("async/add/<str:key>/", views.async_add),
]
