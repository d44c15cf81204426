# One image for workers, producers and Flower: slim Python, runtime dependencies only, non-root.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 taskpool
WORKDIR /app

COPY pyproject.toml README.md ./
COPY config ./config
COPY tasks ./tasks
COPY workers ./workers
RUN pip install ".[flower]"

USER taskpool
# Exec form: the worker is PID 1's direct child of nothing else, so SIGTERM reaches Celery and
# starts its warm shutdown.
CMD ["celery", "-A", "tasks", "worker", "-P", "prefork", "-E", "--loglevel", "INFO"]
