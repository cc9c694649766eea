# syntax=docker/dockerfile:1
# One image for every Plant role: api, worker, worker-audit, beat, flower, migrate, seed.
# The command picks the role (docker/entrypoint.sh), e.g. `docker run IMAGE worker`.
#
# Stage 1 (builder) has the compilers, in case a dependency ever needs building from source;
# stage 2 (runtime) gets only the finished virtualenv, so no build tool reaches production.

# Both stages use the same base, so the virtualenv's interpreter links stay valid. 3.11 is the
# Python the test suite runs on.
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject's pinned list alone, so that a source change reuses
# this (slow) layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install -r requirements.txt

COPY README.md ./
COPY models ./models
COPY tasks ./tasks
COPY worker ./worker
COPY web ./web
COPY cli ./cli
COPY migrations ./migrations
# -P keeps /src off sys.path, so the check imports the installed package, not the source tree.
RUN pip install --no-deps . \
    && python -P -c "import models.migrate as m; assert m.heads(), 'migrations missing from the install'" \
    && python -P -c "import web, pathlib; assert (pathlib.Path(web.__file__).parent / 'templates/audit_report.html').is_file(), 'templates missing'"


FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="plant" \
      org.opencontainers.image.description="Plant: Flask API, Celery workers and beat, Flower, migrations"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PLANT_DATA_DIR=/var/lib/plant

RUN groupadd --system --gid 10001 plant \
    && useradd --system --uid 10001 --gid plant --home-dir /var/lib/plant --no-create-home \
       --shell /usr/sbin/nologin plant \
    && mkdir -p /var/lib/plant \
    && chown plant:plant /var/lib/plant

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY gunicorn.conf.py /app/gunicorn.conf.py
COPY docker/flower_conf.py /app/flower_conf.py
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/plant-entrypoint

USER 10001:10001
EXPOSE 8000 5555

# Role-aware: the entrypoint recorded which role this container runs (see entrypoint.sh).
HEALTHCHECK --interval=30s --timeout=15s --start-period=40s --retries=3 \
    CMD ["plant-entrypoint", "healthcheck"]

ENTRYPOINT ["plant-entrypoint"]
CMD ["api"]
