FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN pip install '.[redbeat]' flower
COPY alembic.ini ./
COPY alembic ./alembic
RUN useradd --create-home app
USER app
