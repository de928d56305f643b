# The dispatcher image (also runs the example tenants in docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DISPATCHER_HOST=0.0.0.0 \
    DISPATCHER_PORT=8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY dispatcher ./dispatcher
COPY workers_registry ./workers_registry
COPY examples ./examples
COPY config ./config
RUN pip install . && useradd --system --no-create-home dispatcher

USER dispatcher
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:8080/health', headers={'Host': 'localhost'}), timeout=2)"]
CMD ["dispatcher", "serve", "--no-migrate"]
