# Two stages: the first builds the wheel from the checkout, the second installs that wheel and
# nothing else, so the image is what `pip install ai-usage-worker[worker]` gives an application
# (no source tree, no alembic.ini: the migrations ship inside the package).
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /dist /dist
RUN pip install "$(ls /dist/*.whl)[worker,redbeat]" flower && rm -rf /dist
RUN useradd --create-home app
USER app
WORKDIR /home/app
# The release step, run once before workers start (compose's `migrate`, the Procfile's release).
CMD ["ai-usage", "migrate"]
