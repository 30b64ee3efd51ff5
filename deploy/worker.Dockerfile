# The GPU worker image: CUDA torch + the engine, one Celery worker per GPU (--pool solo).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY training ./training
COPY worker ./worker
COPY service ./service
COPY migrations ./migrations
RUN pip install ".[postgres,mlflow]"
RUN useradd --uid 10001 camdrift && mkdir -p /data && chown camdrift /data
USER camdrift
# one pinned Celery worker per GPU of the container (all of the host's): worker/runtime/fleet.py
CMD ["camdrift", "fleet"]
