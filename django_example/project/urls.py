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
]
