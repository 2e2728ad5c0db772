# s2sam-gpu: SAM inference on NVIDIA GPUs (onnxruntime-gpu, CUDA execution provider).
#
# Build from the repository root with `make images`; see cpu.Dockerfile for the
# version contract. CUDA_BASE must provide the CUDA 12 runtime and cuDNN 9 that
# onnxruntime-gpu's PyPI wheels link against (NVIDIA's *-cudnn-runtime-* images do).
# Pin it by digest for reproducible builds: CUDA_BASE=nvidia/cuda:12.6.3-...@sha256:...
# Nodes need an NVIDIA driver for CUDA 12.6 (>= 560) and the NVIDIA device plugin.
ARG CUDA_BASE=docker.io/nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

FROM ${CUDA_BASE}
ARG S2SAM_VERSION=""
LABEL org.opencontainers.image.title="s2sam-gpu" \
      org.opencontainers.image.description="s2-sam-pipelines: SAM inference on NVIDIA GPUs" \
      org.opencontainers.image.source="https://github.com/s2-sam-pipelines/s2-sam-pipelines" \
      org.opencontainers.image.version="${S2SAM_VERSION}"

# Python from the distribution; Ubuntu's images ship a user with uid 1000 ("ubuntu"),
# which makes room for ours.
RUN set -eu; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install --yes --no-install-recommends python3 python3-venv ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi; \
    useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin s2sam; \
    mkdir -p /gcs /minio /s3 /var/cache/s2sam; \
    chown s2sam:s2sam /gcs /minio /s3 /var/cache/s2sam

# As in cpu.Dockerfile, with the [gpu] extra (onnxruntime-gpu); python3-venv and the pip
# wheels it brings leave with pip.
RUN --mount=type=bind,source=.,target=/mnt/src \
    set -eu; \
    mkdir /tmp/src; \
    cp -r /mnt/src/pyproject.toml /mnt/src/setup.cfg /mnt/src/README.md \
          /mnt/src/components /mnt/src/pipelines /mnt/src/model_export /tmp/src/; \
    python3 -m venv /opt/s2sam; \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
        /opt/s2sam/bin/pip install --quiet "/tmp/src[gpu]"; \
    installed="$(/opt/s2sam/bin/s2sam --version)"; \
    if [ -n "$S2SAM_VERSION" ] && [ "$installed" != "s2sam $S2SAM_VERSION" ]; then \
        echo "installed '$installed', but the image is tagged $S2SAM_VERSION" >&2; exit 1; \
    fi; \
    /opt/s2sam/bin/python -c "import onnxruntime as ort; \
assert 'CUDAExecutionProvider' in ort.get_available_providers(), ort.get_available_providers()"; \
    /opt/s2sam/bin/python -m pip uninstall --yes --quiet pip setuptools wheel; \
    DEBIAN_FRONTEND=noninteractive apt-get purge --yes --auto-remove python3-venv python3-pip-whl python3-setuptools-whl; \
    rm -rf /tmp/src /root/.cache /var/lib/apt/lists/*

ENV PATH=/opt/s2sam/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    S2SAM_CACHE_DIR=/var/cache/s2sam
USER 1000:1000
WORKDIR /home/s2sam
CMD ["s2sam", "--help"]
