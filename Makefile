# Developer shortcuts; each is one documented command.
.PHONY: install test lint typecheck demo

install:
	pip install -e '.[test,dev]'

test:
	pytest

lint:
	ruff check . && ruff format --check .

typecheck:
	mypy

demo:
	taskpool demo
