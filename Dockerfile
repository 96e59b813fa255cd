# Production image: the official Airflow 3.3.2 image for Python 3.11, plus this project.
# pg_dump, pg_restore and pg_basebackup must be at least the major version of the newest server
# in the policy (the local stack and the sample policy run PostgreSQL 16), and the PITR drill
# starts a throwaway server, so the image carries PostgreSQL 16's client AND server binaries
# from the PostgreSQL project's own apt repository (Debian bookworm ships only 15).
# BACKUP_PG_BIN_DIR points the tasks at them; a task refuses to run an older client.
# libpq-dev and gcc: barman (WAL archive and restore, continuous tier) builds psycopg2.
FROM apache/airflow:3.3.2-python3.11

ARG PG_MAJOR=16
USER 0
COPY packages.txt /tmp/packages.txt
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && install -d /usr/share/postgresql-common/pgdg \
    && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc \
    && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list \
    && apt-get update \
    && xargs -a /tmp/packages.txt apt-get install -y --no-install-recommends \
    && apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" "postgresql-${PG_MAJOR}" \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /tmp/packages.txt
ENV BACKUP_PG_BIN_DIR=/usr/lib/postgresql/${PG_MAJOR}/bin

USER 50000
COPY --chown=50000:0 requirements.txt /opt/airflow/requirements.txt
RUN pip install --no-cache-dir -r /opt/airflow/requirements.txt

COPY --chown=50000:0 dags/ /opt/airflow/dags/
COPY --chown=50000:0 include/ /opt/airflow/include/
COPY --chown=50000:0 plugins/ /opt/airflow/plugins/
ENV PYTHONPATH=/opt/airflow
