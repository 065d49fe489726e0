# Relay Station: one image for every role (`relay gateway|worker|simulator`).
# Compose (docker-compose.yml) runs it against the official Apache Kafka image, so the
# embedded broker's Maven/JDK toolchain is not needed here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RELAY_DATA_DIR=/var/lib/relay

WORKDIR /src

# Dependencies first, read from pyproject.toml alone: this layer is rebuilt only when the
# dependency list changes, not on every source edit.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the package itself; explicit copies keep .venv, var/ and tests out of the image.
COPY schemas ./schemas
COPY tables ./tables
COPY agents ./agents
COPY streams ./streams
COPY gateway ./gateway
COPY simulator ./simulator
COPY cli ./cli
RUN pip install --no-deps . && rm -rf /src/build

RUN useradd --system --uid 10001 --home-dir /var/lib/relay --create-home relay
USER relay
WORKDIR /var/lib/relay

EXPOSE 8000 9100
ENTRYPOINT ["relay"]
CMD ["--help"]
