# Production image: the official Airflow 3.3.2 image for Python 3.11, plus this project.
# pg_dump must be at least the major version of the servers it dumps; Debian bookworm ships 15.
# libpq-dev and gcc: barman (WAL archive and restore, continuous tier) builds psycopg2.
FROM apache/airflow:3.3.2-python3.11

USER 0
COPY packages.txt /tmp/packages.txt
# hadolint ignore=DL3008
RUN apt-get update \
    && xargs -a /tmp/packages.txt apt-get install -y --no-install-recommends \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /tmp/packages.txt

USER 50000
COPY --chown=50000:0 requirements.txt /opt/airflow/requirements.txt
RUN pip install --no-cache-dir -r /opt/airflow/requirements.txt

COPY --chown=50000:0 dags/ /opt/airflow/dags/
COPY --chown=50000:0 include/ /opt/airflow/include/
COPY --chown=50000:0 plugins/ /opt/airflow/plugins/
ENV PYTHONPATH=/opt/airflow
