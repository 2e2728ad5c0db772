# s2sam-cpu: ingest, chip planning, merge, and SAM on CPU (onnxruntime and OpenVINO).
#
# Build from the repository root with `make images` (or `REGISTRY=... make push`): the
# tag is components.images.image("cpu") and the image installs THIS package at that
# version, so the component code inlined in a compiled pipeline and the library in the
# image are the same code.
#
# PYTHON_BASE: any Debian/Ubuntu image with python3 (>= 3.10) and its venv module. Pin
# it by digest for reproducible builds: PYTHON_BASE=python:3.11.11-slim-bookworm@sha256:...
ARG PYTHON_BASE=docker.io/library/python:3.11.11-slim-bookworm

FROM ${PYTHON_BASE}
ARG S2SAM_VERSION=""
LABEL org.opencontainers.image.title="s2sam-cpu" \
      org.opencontainers.image.description="s2-sam-pipelines: ingest, planning, merge, CPU inference" \
      org.opencontainers.image.source="https://github.com/s2-sam-pipelines/s2-sam-pipelines" \
      org.opencontainers.image.version="${S2SAM_VERSION}"

# A non-root user with a numeric uid (runAsNonRoot can check it). The KFP launcher stages
# artifacts under /gcs, /minio and /s3; owning them lets the image run as this user on KFP
# backends that do not mount scratch volumes there. S2SAM_CACHE_DIR becomes a volume on
# the cluster (pipelines/kubernetes.py).
RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin s2sam \
 && mkdir -p /gcs /minio /s3 /var/cache/s2sam \
 && chown s2sam:s2sam /gcs /minio /s3 /var/cache/s2sam

# One step, one layer: the sources are bind-mounted, copied to scratch, installed into
# a venv (non-editable), and deleted with pip, setuptools and wheel: nothing can build
# or install at run time, and no source tree or build cache is left in the image.
RUN --mount=type=bind,source=.,target=/mnt/src \
    set -eu; \
    mkdir /tmp/src; \
    cp -r /mnt/src/pyproject.toml /mnt/src/setup.cfg /mnt/src/README.md \
          /mnt/src/components /mnt/src/pipelines /mnt/src/model_export /tmp/src/; \
    python3 -m venv /opt/s2sam; \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
        /opt/s2sam/bin/pip install --quiet "/tmp/src[cpu,openvino]"; \
    installed="$(/opt/s2sam/bin/s2sam --version)"; \
    if [ -n "$S2SAM_VERSION" ] && [ "$installed" != "s2sam $S2SAM_VERSION" ]; then \
        echo "installed '$installed', but the image is tagged $S2SAM_VERSION" >&2; exit 1; \
    fi; \
    /opt/s2sam/bin/python -m pip uninstall --yes --quiet pip setuptools wheel; \
    rm -rf /tmp/src /root/.cache

ENV PATH=/opt/s2sam/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    S2SAM_CACHE_DIR=/var/cache/s2sam
USER 1000:1000
WORKDIR /home/s2sam
CMD ["s2sam", "--help"]
