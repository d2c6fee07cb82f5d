# kontext-server on an NVIDIA GPU. Build: docker build -t kontext-server .
# Run:  docker run --gpus all -p 8000:8000 -e KONTEXT_API_KEYS=sk-... \
#         -v /path/to/FLUX.1-Kontext-dev:/models/FLUX.1-Kontext-dev -v kontext-data:/data kontext-server
# The server refuses to listen on 0.0.0.0 without API keys (or --insecure-no-auth).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
RUN python3 -m venv $VIRTUAL_ENV

WORKDIR /app
# torch first and pinned: its CUDA build from the package index, cached apart from our code.
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md ./
COPY model ./model
COPY server ./server
COPY kernels ./kernels
COPY configs ./configs
RUN pip install --no-cache-dir .

ENV KONTEXT_CONFIG=/app/configs/kontext-dev.yaml KONTEXT_HOST=0.0.0.0 KONTEXT_DATA_DIR=/data
EXPOSE 8000
ENTRYPOINT ["kontext", "serve"]
