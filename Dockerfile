# mbot server image.
#
#   docker build -t mbot .
#   docker run -d --name mbot -p 8000:8000 -v mbot-data:/data -e MBOT_PUBLIC_HOST=monitor.example.org mbot
#
# BASE: any Debian-like image with Python 3.11+ as `python3`, venv and apt (python:3.11-slim by default;
# `make image-test` uses a local debootstrap image instead, see deploy/podman-setup.sh).
# WHEELS: a directory of the build context holding wheels for the dependencies; when it has none (the default,
# deploy/, has none) they come from the package index. deploy/image-test.sh fills one with `pip download`.
# With podman, build with `--format docker`: the OCI format has no HEALTHCHECK.
ARG BASE=python:3.11-slim

FROM ${BASE} AS base
# The server makes its certificate with the openssl command. python:3.11-slim has it (ca-certificates depends on
# it), and so does the debootstrap base; apt runs only on a base without it.
RUN if ! command -v openssl >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssl \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && openssl version

# The dependencies in a virtual environment, built in a stage of their own so that the wheels stay out of the
# image; pip and setuptools are removed from it, and so are the packages' own test suites (numpy, matplotlib: about
# 25 MB), which nothing imports.
FROM base AS deps
ARG WHEELS=deploy
COPY pyproject.toml /src/pyproject.toml
COPY ${WHEELS}/ /src/wheels/
# The server's dependencies and the agent's (psutil): the server runs the agent to watch the machine when the host's
# /proc is mounted at /host/proc (see docs/architecture.md, "The server watches itself").
RUN python3 -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; print(*p["dependencies"], *p["optional-dependencies"]["agent"], sep="\n")' \
        > /src/requirements.txt \
    && python3 -m venv /opt/mbot \
    && if ls /src/wheels/*.whl >/dev/null 2>&1; then \
           /opt/mbot/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /src/wheels \
               -r /src/requirements.txt; \
       else \
           /opt/mbot/bin/pip install --no-cache-dir --disable-pip-version-check -r /src/requirements.txt; \
       fi \
    && /opt/mbot/bin/pip uninstall -y -q setuptools pip \
    && find /opt/mbot/lib/*/site-packages -type d \( -name tests -o -name _tests \) -prune -exec rm -rf {} +

FROM base
RUN useradd --no-log-init --user-group --uid 10001 --home-dir /home/mbot --create-home --shell /usr/sbin/nologin mbot \
    && mkdir -p /data \
    && chown mbot:mbot /data \
    && chmod 700 /data
COPY --from=deps /opt/mbot /opt/mbot
COPY mbot /app/mbot
# GET /agent.py (the one-line install) and /newkey send the agent file from here.
COPY agent/mbot_agent.py /app/agent/mbot_agent.py
RUN /opt/mbot/bin/python -m compileall -q /app/mbot

ENV PATH=/opt/mbot/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    MBOT_DATA_DIR=/data \
    PORT=8000
USER mbot
WORKDIR /app
VOLUME /data
EXPOSE 8000
# A real check: the database opens and the agent port answers TLS with the server's own certificate.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["python", "-m", "mbot", "health"]
# python -m mbot is PID 1: on SIGTERM (docker/podman stop) it closes the agent connections, commits what is
# queued and exits 0. Exec form, so that no shell sits between the signal and the server.
ENTRYPOINT ["python", "-m", "mbot"]
CMD ["serve"]
