"""The Celery app and its tasks: ``celery -A tasks worker`` runs them."""

from tasks.celery_app import app, create_app
from tasks.definitions import LOCAL_NODE, print_number, square, sum_of_squares

__all__ = ["LOCAL_NODE", "app", "create_app", "print_number", "square", "sum_of_squares"]
