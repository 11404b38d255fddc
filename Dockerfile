# A worker image: lrtkit with the SQS and RabbitMQ brokers and S3/R2 storage.
#
#   docker build -t my-worker .
#   docker run --rm -e LRT_BROKER=sqs -e LRT_SQS_QUEUE_URL=... -e LRT_STORAGE=s3://bucket/prefix \
#       -e LRT_S3_ENDPOINT_URL=... -e LRT_S3_ACCESS_KEY_ID=... -e LRT_S3_SECRET_ACCESS_KEY=... my-worker
#
# Put your own handler module in /app (replace the examples) and change CMD, e.g.
#   CMD ["lrtkit", "run", "train:main", "--concurrency", "1"]
# or run any program per job:  CMD ["lrtkit", "run", "--command", "python train.py"]
# On SaladCloud the worker finds the IMDS by itself (deletion cost while busy). SIGTERM makes it
# checkpoint and hand the job back within LRT_GRACE_SECONDS.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml README.md /src/
COPY lrtkit /src/lrtkit
COPY plugins /src/plugins
RUN pip install "/src[s3]" /src/plugins/lrtkit-sqs /src/plugins/lrtkit-rabbitmq \
    && rm -rf /src

WORKDIR /app
COPY examples /app/examples
RUN useradd --create-home --uid 1000 worker && chown -R worker /app
USER worker

# Set LRT_STORAGE to s3://bucket/prefix when you run it: the default (./.lrtkit) is this
# container's own disk, which no other worker can see and which vanishes with the container.

CMD ["lrtkit", "run", "examples.train_lora:train"]
