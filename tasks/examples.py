"""The classic multiprocessing examples, as tasks of this project's app."""

from taskpool.examples import register
from tasks.app import app

square, print_number, sum_of_squares = register(app)
