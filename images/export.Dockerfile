# s2sam-export: export SAM checkpoints to ONNX, check parity against PyTorch, register
# in MLflow (the export_sam component, `s2sam export-model`).
#
# Build from the repository root with `make images`; see cpu.Dockerfile for the
# version contract and PYTHON_BASE. The export runs on CPU, so torch and torchvision
# come from PyTorch's CPU wheel index (TORCH_INDEX_URL; empty: PyPI's CUDA builds,
# several GB larger). onnxruntime (CPU) runs the parity check. setuptools stays: torch
# declares it as a run-time requirement.
ARG PYTHON_BASE=docker.io/library/python:3.11.11-slim-bookworm

FROM ${PYTHON_BASE}
ARG S2SAM_VERSION=""
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
LABEL org.opencontainers.image.title="s2sam-export" \
      org.opencontainers.image.description="s2-sam-pipelines: SAM -> ONNX export and MLflow registration" \
      org.opencontainers.image.source="https://github.com/s2-sam-pipelines/s2-sam-pipelines" \
      org.opencontainers.image.version="${S2SAM_VERSION}"

RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin s2sam \
 && mkdir -p /gcs /minio /s3 /var/cache/s2sam \
 && chown s2sam:s2sam /gcs /minio /s3 /var/cache/s2sam

RUN --mount=type=bind,source=.,target=/mnt/src \
    set -eu; \
    mkdir /tmp/src; \
    cp -r /mnt/src/pyproject.toml /mnt/src/setup.cfg /mnt/src/README.md \
          /mnt/src/components /mnt/src/pipelines /mnt/src/model_export /tmp/src/; \
    python3 -m venv /opt/s2sam; \
    export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        /opt/s2sam/bin/pip install --quiet --index-url "$TORCH_INDEX_URL" torch torchvision; \
    fi; \
    /opt/s2sam/bin/pip install --quiet setuptools wheel torch torchvision; \
    sam2="$(sed -n 's/^ *\(sam2==[0-9.]*\).*/\1/p' /tmp/src/setup.cfg)"; \
    SAM2_BUILD_CUDA=0 /opt/s2sam/bin/pip install --quiet --no-build-isolation "$sam2"; \
    /opt/s2sam/bin/pip install --quiet "/tmp/src[cpu,export]"; \
    installed="$(/opt/s2sam/bin/s2sam --version)"; \
    if [ -n "$S2SAM_VERSION" ] && [ "$installed" != "s2sam $S2SAM_VERSION" ]; then \
        echo "installed '$installed', but the image is tagged $S2SAM_VERSION" >&2; exit 1; \
    fi; \
    /opt/s2sam/bin/python -m pip uninstall --yes --quiet pip wheel; \
    rm -rf /tmp/src /root/.cache

ENV PATH=/opt/s2sam/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    S2SAM_CACHE_DIR=/var/cache/s2sam
USER 1000:1000
WORKDIR /home/s2sam
CMD ["s2sam", "--help"]
