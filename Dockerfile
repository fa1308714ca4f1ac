# syntax=docker/dockerfile:1
# One image for the three gpupool processes: gpupool-controller, gpupool-extender, gpupool-deviceplugin (and the
# gpupool CLI). The Helm chart (charts/gpupool) sets the command of each container.
#
#   docker build -t ghcr.io/gpupool/gpupool:0.1.0 .
#
# Runs as the non-root user 10001 by default. The node agent (gpupool-deviceplugin DaemonSet) needs root: it
# creates its socket in the kubelet's root-owned /var/lib/kubelet/device-plugins; the chart runs that one
# container as uid 0, without capabilities and without privilege escalation. NVML (libnvidia-ml.so.1) is not in
# the image: the NVIDIA container toolkit injects it into the node agent (NVIDIA_VISIBLE_DEVICES=all).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- the pooling runtime (libgpupool.so)
# Built against an old glibc (2.17) so that it loads in every application image it is preloaded into: a library
# needing a newer glibc than the container's is skipped by ld.so and would leave the container unenforced.
ARG RUNTIME_BUILD_IMAGE=quay.io/pypa/manylinux2014_x86_64
FROM ${RUNTIME_BUILD_IMAGE} AS runtime
WORKDIR /src/runtime
COPY runtime ./
RUN make clean && make

# ---------------------------------------------------------------- builder: wheels of gpupool and its deps
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# grpcio-tools compiles the kubelet device-plugin API stubs (git-ignored, generated on first import)
RUN pip install "grpcio-tools>=1.62"
COPY pyproject.toml README.md ./
COPY gpupool ./gpupool
COPY kubeio ./kubeio
COPY extender ./extender
COPY controller ./controller
COPY deviceplugin ./deviceplugin
# generate deviceplugin/api/api_pb2*.py now, so that they ship in the wheel
RUN python -c "import deviceplugin.api as a; a.generate(force=True); assert not a.stubs_stale()" \
 && pip wheel --wheel-dir /wheels .

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="gpupool" \
      org.opencontainers.image.description="Kubernetes GPU pooling: controller, scheduler extender, node agent" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
# The device-plugin stubs must be newer than api.proto, or their first import would try to rewrite
# site-packages (read-only root filesystem in the chart, non-root user): touch them and check.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/gpupool-*.whl \
 && python -c "import deviceplugin.api as a; [p.touch() for p in a.GENERATED]; assert not a.stubs_stale()" \
 && python -c "import controller.main, extender.main, deviceplugin.main" \
 && groupadd --system --gid 10001 gpupool \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gpupool
# the node agent copies it to the host (--runtime-library) for the `pool` backend
COPY --from=runtime /src/runtime/build/libgpupool.so /opt/gpupool/libgpupool.so
USER 10001:10001
WORKDIR /tmp
CMD ["gpupool", "--help"]
