# Test-only stand-in for MinIO (its image cannot be pulled here): moto's S3 server, with its objects
# kept on /data (the `results` volume) across restarts by s3_standin.py.
FROM python:3.11.11-slim-bookworm
ARG PIP_INDEX_URL=https://pypi.org/simple
RUN pip install --no-cache-dir "moto[server]==5.2.5"
COPY s3_standin.py /usr/local/bin/s3_standin.py
EXPOSE 9000
CMD ["python", "/usr/local/bin/s3_standin.py", "/data"]
