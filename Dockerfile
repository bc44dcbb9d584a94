# raftmq node image: `docker build -t raftmq .`
FROM python:3.11-slim

WORKDIR /opt/raftmq
COPY pyproject.toml README.md ./
COPY raftmq ./raftmq
COPY storage ./storage
COPY cluster ./cluster
COPY node ./node
COPY chaos ./chaos
RUN pip install --no-cache-dir . && useradd --system --home /data raftmq \
    && mkdir -p /data && chown raftmq /data

USER raftmq
VOLUME ["/data"]
EXPOSE 7100 7200
ENTRYPOINT ["raftmq"]
CMD ["node", "--help"]
