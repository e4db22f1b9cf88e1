# relay365 as a container image: docker build -t relay365 .   (see docs/deploy.md)
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/relay365 \
 && /opt/relay365/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/relay365/bin/pip install --no-cache-dir .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/relay365 --shell /usr/sbin/nologin relay365 \
 && install -d -o relay365 -g relay365 -m 0750 /var/lib/relay365 \
 && install -d -m 0755 /etc/relay365
COPY --from=build /opt/relay365 /opt/relay365
ENV PATH=/opt/relay365/bin:$PATH \
    RELAY365_CONFIG=/etc/relay365/relay365.toml \
    RELAY365_STATE_DIR=/var/lib/relay365 \
    PYTHONUNBUFFERED=1
USER relay365
VOLUME ["/var/lib/relay365"]
# SMTP relay and web listener (API, /healthz, /readyz, /metrics); bind 0.0.0.0 in relay365.toml, or
# with RELAY365_RELAY__SMTP__0__HOST=0.0.0.0 and RELAY365_RELAY__HTTP_HOST=0.0.0.0.
EXPOSE 2525 8025
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8025/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["relay365"]
CMD ["serve", "--log-format", "json"]
