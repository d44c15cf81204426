"""This project's Celery app and its tasks: ``celery -A tasks worker`` runs them.

Add tasks in modules of this package (and to ``include`` in ``tasks/app.py``).
"""

from tasks.app import app
from tasks.examples import print_number, square, sum_of_squares

__all__ = ["app", "print_number", "square", "sum_of_squares"]
