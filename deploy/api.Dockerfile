# The API image: FastAPI + SQL + the Celery client. No torch: the API never imports it.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY deploy/api-requirements.txt /tmp/api-requirements.txt
RUN pip install -r /tmp/api-requirements.txt
COPY pyproject.toml README.md alembic.ini ./
COPY training ./training
COPY worker ./worker
COPY service ./service
COPY migrations ./migrations
# The package itself without its compute dependencies (torch, timm, scipy stay out).
RUN pip install --no-deps .
RUN useradd --uid 10001 camdrift && mkdir -p /data && chown camdrift /data
USER camdrift
EXPOSE 8000
CMD ["sh", "-c", "camdrift db upgrade && exec uvicorn --factory service.app:create_app --host 0.0.0.0 --port 8000"]
