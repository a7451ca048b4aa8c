# `tidebase serve` for the compose stack. Build context: the repository root
# (compose.yaml sets it), e.g. `docker build -f collector/tidebase.Dockerfile .`
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY tidebase ./tidebase
COPY tidebase_otel ./tidebase_otel
COPY migrations ./migrations
# opentelemetry-distro: lets `opentelemetry-instrument` set up the SDK from the OTEL_* variables
RUN pip install --no-cache-dir '.[otel]' opentelemetry-distro \
    && useradd --system --home-dir /app --shell /usr/sbin/nologin tidebase

USER tidebase
EXPOSE 7373
# opentelemetry-instrument sets up the SDK from the OTEL_* variables (compose.yaml) and turns on
# tidebase_otel through its entry point; request spans go to the collector.
CMD ["opentelemetry-instrument", "tidebase", "serve", "--host", "0.0.0.0", "--port", "7373"]
